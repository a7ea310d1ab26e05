# Boot: pick the board, read the site settings, run the application; on any failure write what happened
# to the error ring and reset the board (a clean heap beats a half-dead application). A bad configuration
# shows an error screen instead of resetting in a loop.
import sys
import time

import asyncio
import errors
import settings

RESTART_DELAY_MS = 2000


def make_board():
    if sys.platform == "linux":  # the MicroPython unix port: the simulated board
        from boards.sim import Board
        return Board()
    name = "esp32s3_tft"
    try:
        import json
        with open("/site.json") as f:
            name = json.load(f).get("board", name)
    except (OSError, ValueError):
        pass
    module = getattr(__import__("boards." + name), name)
    return module.Board()


async def start(board):
    await board.start()
    asyncio.get_event_loop().set_exception_handler(_task_failed)
    try:
        site = settings.load_site(board.flash + "/site.json")
    except settings.SettingsError as e:
        from font import Font
        from screens import Screens
        errors.log(board.flash, "settings: " + str(e))
        Screens(board.display, Font(board.flash + "/font.bin")).error(str(e))
        while True:  # nothing to do until a technician fixes the site file
            board.watchdog.feed()
            await asyncio.sleep(1)
    from app import App
    await App(board, site).run()


def _task_failed(loop, context):
    raise context["exception"]  # one task's failure restarts the device, never goes unnoticed


def main():
    board = make_board()
    try:
        asyncio.run(start(board))
    except Exception as e:  # noqa: BLE001 - log it, then start again from a clean heap
        errors.log(board.flash, errors.exception_text(e))
    time.sleep_ms(RESTART_DELAY_MS)
    board.reset()


main()
