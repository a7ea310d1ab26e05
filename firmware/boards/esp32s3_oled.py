# ESP32-S3 with a 128x64 SSD1306 OLED on I2C: the same application, one bit a pixel, smaller layouts
# (screens.py picks them from the display's size).
import framebuf
import machine

from boards.esp32s3 import BaseBoard

I2C_ID, SCL, SDA, ADDRESS = 0, 9, 8, 0x3C
INIT = (0xAE, 0x20, 0x00, 0x40, 0xA1, 0xA8, 63, 0xC8, 0xD3, 0x00, 0xDA, 0x12, 0xD5, 0x80, 0xD9, 0xF1,
        0xDB, 0x30, 0x81, 0xFF, 0xA4, 0xA6, 0x8D, 0x14, 0xAF)


class Display:
    width, height = 128, 64

    def __init__(self):
        self.i2c = machine.I2C(I2C_ID, scl=machine.Pin(SCL), sda=machine.Pin(SDA), freq=400_000)
        self.buffer = bytearray(self.width * self.height // 8)
        self.fb = framebuf.FrameBuffer(self.buffer, self.width, self.height, framebuf.MONO_VLSB)
        for command in INIT:
            self._command(command)

    def _command(self, command):
        self.i2c.writeto(ADDRESS, bytes([0x80, command]))

    def show(self, kind):
        for command in (0x21, 0, self.width - 1, 0x22, 0, self.height // 8 - 1):
            self._command(command)
        self.i2c.writevto(ADDRESS, (b"\x40", self.buffer))

    def brightness(self, percent):
        self._command(0x81)
        self._command(percent * 255 // 100)


class Board(BaseBoard):
    name = "esp32s3_oled"

    def __init__(self):
        super().__init__(Display())
