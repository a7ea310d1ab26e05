# The simulated board: the same application on the MicroPython unix port. Its buttons and screen are driven
# and read by the host over a local TCP connection (one JSON object a line), its flash is a directory, its
# network is the host's real sockets (which the host can "unplug").
#   host -> device: {"button": i, "down": true|false}   {"net": false|true}   {"screen": 1}   {"exit": 0}
#   device -> host: {"frame": n, "kind": "prompt", "t": ms}   {"screen_piece": base64}... {"screen": {...}}
#                   {"led": bool}   {"beep": ms}
import asyncio
import binascii
import json
import os
import sys
import time

import framebuf

SCREEN_PIECE = 512  # bytes of frame buffer per line sent to the host: small, for a fragmented heap
RESET_EXIT = 75  # the host boots the device again when its process ends with this code
PALETTE = (  # GS4 index -> RGB, the colours the screens use (see screens.py)
    0x000000, 0xFFFFFF, 0x1B8A3A, 0x6CC04A, 0xE0B000, 0xF07820, 0xD02020, 0x808080,
    0x1F5FBF, 0xD8E4F0, 0x303030, 0xC0C0C0, 0x0A3D7A, 0xFFF4D6, 0x4A4A4A, 0xF2F2F2,
)


class Pin:
    def __init__(self):
        self.level = 1  # pulled up: 1 until pressed

    def value(self):
        return self.level


class Display:
    def __init__(self, board, width, height):
        self.board = board
        self.width, self.height = width, height
        self.buffer = bytearray(width * height // 2)
        self.fb = framebuf.FrameBuffer(self.buffer, width, height, framebuf.GS4_HMSB)
        self.frames = 0

    def brightness(self, percent):
        self.board.send({"brightness": percent})

    def show(self, kind):
        self.frames += 1
        self.board.send({"frame": self.frames, "kind": kind, "t": time.ticks_ms()})


class Led:
    def __init__(self, board):
        self.board = board

    def on(self, lit):
        self.board.send({"led": bool(lit)})


class Buzzer:
    def __init__(self, board):
        self.board = board
        self.volume = 60

    def beep(self, ms):
        self.board.send({"beep": ms, "volume": self.volume})


class Net:
    def __init__(self):
        self.plugged = True
        self._open = []

    async def open_connection(self, host, port, tls=None):
        if not self.plugged:
            raise OSError("network unplugged")
        if tls is None:
            reader, writer = await asyncio.open_connection(host, port)
        else:  # the unix port's mbedTLS, as on the ESP32
            reader, writer = await asyncio.open_connection(host, port, ssl=tls, server_hostname=host)
        self._open.append(writer)
        return reader, writer

    def isconnected(self):
        return self.plugged

    def rssi(self):
        return -55 if self.plugged else None

    def unplug(self):
        self.plugged = False
        for writer in self._open:  # the link drops: every connection dies at once
            try:
                writer.close()
            except OSError:
                pass
        self._open = []


class Watchdog:
    def feed(self):
        pass


class Board:
    name = "sim"

    def __init__(self):
        self.flash = os.getenv("HCP_SIM_FLASH") or "."
        width = int(os.getenv("HCP_SIM_WIDTH") or 320)
        height = int(os.getenv("HCP_SIM_HEIGHT") or 240)
        self.buttons = [Pin() for _ in range(5)]
        self.display = Display(self, width, height)
        self.led = Led(self)
        self.buzzer = Buzzer(self)
        self.net = Net()
        self.watchdog = Watchdog()
        self._control = None
        self._reader = None

    def reset(self):
        sys.exit(RESET_EXIT)

    async def start(self):
        """Connect to the host once; after an application restart, listen to it again on the new loop."""
        port = os.getenv("HCP_SIM_CONTROL")
        if port and self._control is None:
            self._reader, self._control = await asyncio.open_connection("127.0.0.1", int(port))
        if self._control is not None:
            asyncio.create_task(self._commands(self._reader))

    def send(self, message):
        if self._control is not None:
            self._control.write(json.dumps(message).encode() + b"\n")
            asyncio.create_task(self._control.drain())

    async def _send_screen(self):
        """The frame buffer in pieces small enough for a device-sized heap, then a line that closes it."""
        control = self._control
        if control is None:
            return
        buffer = self.display.buffer
        for at in range(0, len(buffer), SCREEN_PIECE):
            piece = binascii.b2a_base64(bytes(buffer[at:at + SCREEN_PIECE])).strip()
            control.write(b'{"screen_piece":"' + piece + b'"}\n')
            await control.drain()
        self.send({"screen": {"width": self.display.width, "height": self.display.height,
                              "format": "GS4_HMSB", "palette": PALETTE}})

    async def _commands(self, reader):
        while True:
            line = await reader.readline()
            if not line:
                sys.exit(0)  # the host went away: so does the device
            command = json.loads(line)
            if "button" in command:
                self.buttons[command["button"]].level = 0 if command["down"] else 1
            elif "net" in command:
                if command["net"]:
                    self.net.plugged = True
                else:
                    self.net.unplug()
            elif "screen" in command:
                await self._send_screen()
            elif "exit" in command:
                sys.exit(command["exit"])
