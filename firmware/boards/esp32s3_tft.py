# ESP32-S3 with a 320x240 ILI9341 SPI panel. The application draws into a 4-bit palette frame buffer
# (38 KB: a full RGB565 buffer, 150 KB, does not fit beside Wi-Fi); show() converts it to RGB565 a band of
# rows at a time into one small buffer and sends it.
import framebuf
import machine
import micropython

from boards.esp32s3 import BaseBoard

SPI_ID, SCK, MOSI, CS, DC, RST, BACKLIGHT = 2, 12, 11, 10, 9, 14, 13
BAND_ROWS = 16
PALETTE = (  # the same colours as the simulated board, as RGB565
    0x0000, 0xFFFF, 0x1C47, 0x6E09, 0xE580, 0xF3C4, 0xD104, 0x8410,
    0x1AF7, 0xDF3E, 0x3186, 0xC618, 0x09EF, 0xFFBA, 0x4A49, 0xF79E,
)


@micropython.viper
def _to_rgb565(src, dst, lut, pixels: int):
    s = ptr8(src)  # noqa: F821 - viper built-ins
    d = ptr8(dst)  # noqa: F821
    t = ptr8(lut)  # noqa: F821
    for i in range(pixels // 2):
        byte = s[i]
        hi, lo = (byte >> 4) * 2, (byte & 15) * 2
        d[i * 4], d[i * 4 + 1] = t[hi], t[hi + 1]
        d[i * 4 + 2], d[i * 4 + 3] = t[lo], t[lo + 1]


class Display:
    width, height = 320, 240

    def __init__(self):
        self.spi = machine.SPI(SPI_ID, baudrate=40_000_000, sck=machine.Pin(SCK), mosi=machine.Pin(MOSI))
        self.cs = machine.Pin(CS, machine.Pin.OUT, value=1)
        self.dc = machine.Pin(DC, machine.Pin.OUT, value=0)
        self.rst = machine.Pin(RST, machine.Pin.OUT, value=1)
        self.backlight = machine.PWM(machine.Pin(BACKLIGHT), freq=1000, duty_u16=52000)
        self.buffer = bytearray(self.width * self.height // 2)
        self.fb = framebuf.FrameBuffer(self.buffer, self.width, self.height, framebuf.GS4_HMSB)
        self.band = bytearray(self.width * BAND_ROWS * 2)
        self.lut = bytearray(32)
        for i, colour in enumerate(PALETTE):
            self.lut[2 * i], self.lut[2 * i + 1] = colour >> 8, colour & 0xFF
        self._init_panel()

    def _command(self, command, data=None):
        self.cs.value(0)
        self.dc.value(0)
        self.spi.write(bytes([command]))
        if data is not None:
            self.dc.value(1)
            self.spi.write(data)
        self.cs.value(1)

    def _init_panel(self):
        self.rst.value(0)
        machine.lightsleep(20)
        self.rst.value(1)
        machine.lightsleep(120)
        self._command(0x01)  # software reset
        machine.lightsleep(120)
        self._command(0x3A, b"\x55")  # 16 bits a pixel
        self._command(0x36, b"\x28")  # landscape, BGR
        self._command(0x11)  # out of sleep
        machine.lightsleep(120)
        self._command(0x29)  # display on

    def show(self, kind):
        row_bytes = self.width // 2
        for top in range(0, self.height, BAND_ROWS):
            rows = min(BAND_ROWS, self.height - top)
            self._command(0x2A, bytes([0, 0, (self.width - 1) >> 8, (self.width - 1) & 0xFF]))
            self._command(0x2B, bytes([top >> 8, top & 0xFF, (top + rows - 1) >> 8, (top + rows - 1) & 0xFF]))
            start = top * row_bytes
            _to_rgb565(memoryview(self.buffer)[start:start + rows * row_bytes], self.band, self.lut,
                       rows * self.width)
            self._command(0x2C, memoryview(self.band)[:rows * self.width * 2])

    def brightness(self, percent):
        self.backlight.duty_u16(percent * 655)


class Board(BaseBoard):
    name = "esp32s3_tft"

    def __init__(self):
        super().__init__(Display())
