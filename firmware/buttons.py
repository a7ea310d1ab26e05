# The five rating buttons, polled (see micropython-async's EVENTS.md: bouncing contacts give levels an
# interrupt handler cannot reason about; polling every few ms costs next to nothing). The driver owns its
# task and hands each debounced press to the application through `presses`, an asyncio-safe queue.
import asyncio
import time


class Buttons:
    poll_ms = 5  # how often the pins are read
    debounce_ms = 40  # after a change, the pin is not looked at again for this long

    def __init__(self, pins):
        self.pins = pins  # active-low: value() is 0 while pressed
        self.presses = []  # (button index, ticks_ms when it went down), oldest first
        self.event = asyncio.Event()
        self._down = [False] * len(pins)
        self._quiet_until = [time.ticks_ms()] * len(pins)
        self._task = asyncio.create_task(self._run())

    def deinit(self):
        self._task.cancel()

    def take(self):
        """The presses since the last call, oldest first."""
        presses, self.presses = self.presses, []
        self.event.clear()
        return presses

    async def _run(self):
        while True:
            now = time.ticks_ms()
            for i, pin in enumerate(self.pins):
                if time.ticks_diff(now, self._quiet_until[i]) < 0:
                    continue
                down = pin.value() == 0
                if down != self._down[i]:
                    self._down[i] = down
                    self._quiet_until[i] = time.ticks_add(now, self.debounce_ms)
                    if down:
                        self.presses.append((i, now))
                        self.event.set()
            await asyncio.sleep_ms(self.poll_ms)
