# What the citizen and the staff see. Each screen is drawn whole into the board's frame buffer, then shown;
# colours are palette indices (a 4-bit palette on the TFT, on/off on a monochrome OLED).
import framebuf

from protocol import codec

BLACK, WHITE, GREEN, LIGHT_GREEN, YELLOW, ORANGE, RED, GREY, BLUE = 0, 1, 2, 3, 4, 5, 6, 7, 8
LEVEL_COLOURS = (GREEN, LIGHT_GREEN, YELLOW, ORANGE, RED)
QUIET_ZONE = 4  # modules of white around a QR code, as the standard asks
REASON_LABELS = dict(codec.REASONS)


class Screens:
    def __init__(self, display, font):
        self.display = display
        self.fb = display.fb
        self.font = font
        self.w, self.h = display.width, display.height
        self.small = self.h < 128  # the OLED variant: fewer words, no colours
        self.offline = False
        self.kind = None
        self._pen = framebuf.FrameBuffer(bytearray(1), 2, 1, framebuf.GS4_HMSB)

    # ---- the screens ----

    def idle(self, config):
        self._clear(WHITE)
        self._bar(config["hall"] or "政务服务好差评")
        y = 26 if not self.small else 18
        self.text(4, y, "窗口 " + config["window"], BLACK, WHITE)
        if config["staff"]:
            self.text(4, y + 20, config["staff"] + " " + config["staff_no"], BLACK, WHITE)
        if not self.small:
            self.text(4, self.h - 40, "欢迎评价", BLUE, WHITE, 2)
        if config["idle_qr"]:
            self._qr(config["idle_qr"], "扫码评价")
        self._show("idle")

    def prompt(self, text, qr, remaining, chosen=None):
        self._clear(WHITE)
        self._bar("请对本次服务进行评价")
        if self.small:
            self.text(0, 18, text[:8], BLACK, WHITE)
            self.text(0, 40, "%d 秒" % remaining, BLACK, WHITE)
        else:
            self.text(4, 24, text[:18], BLACK, WHITE)
            for i in range(5):
                y = 50 + i * 34
                colour = LEVEL_COLOURS[i]
                selected = chosen == i
                self.fb.fill_rect(4, y, 150, 30, colour if selected or chosen is None else GREY)
                if selected:
                    self.fb.rect(2, y - 2, 154, 34, BLACK)
                self.text(12, y + 7, codec.LEVEL_LABELS[i], WHITE, colour if selected or chosen is None else GREY)
            self.text(self.w - 70, self.h - 20, "%3d 秒" % remaining, GREY, WHITE)
        self._qr(qr, "扫码评价")
        self._show("prompt" if chosen is None else "chosen")

    def reasons(self, codes, remaining):
        self._clear(WHITE)
        self._bar("请选择原因(可跳过)")
        for i, code in enumerate(codes[:5]):
            y = (22 + i * 9) if self.small else (40 + i * 34)
            if not self.small:
                self.fb.fill_rect(4, y, 24, 24, LEVEL_COLOURS[i])
            self.text(36 if not self.small else 0, y + 4 if not self.small else y, REASON_LABELS[code], BLACK, WHITE)
        if not self.small:
            self.text(self.w - 70, self.h - 20, "%3d 秒" % remaining, GREY, WHITE)
        self._show("reasons")

    def thanks(self):
        self._message("谢谢您的评价", GREEN)
        self._show("thanks")

    def hint(self, text):
        self._message(text, BLUE)
        self._show("hint")

    def error(self, text):
        self._message(text, RED)
        self._show("error")

    # ---- drawing ----

    def text(self, x, y, text, fg, bg, scale=1):
        pen = self._pen
        pen.pixel(0, 0, bg)
        pen.pixel(1, 0, fg)
        for char in text:
            glyph = self.font.glyph(char) or self.font.glyph("?")
            if glyph is None:
                continue
            if scale == 1:
                self.fb.blit(glyph, x, y, -1, pen)
            else:
                self._scaled(glyph, x, y, fg, bg, scale)
            x += self.font.advance(char) * scale
            if x >= self.w:
                break

    def _scaled(self, glyph, x, y, fg, bg, scale):
        size = self.font.width
        for gy in range(size):
            for gx in range(size):
                colour = fg if glyph.pixel(gx, gy) else bg
                self.fb.fill_rect(x + gx * scale, y + gy * scale, scale, scale, colour)

    def _clear(self, colour):
        self.fb.fill(colour)

    def _bar(self, title):
        self.fb.fill_rect(0, 0, self.w, 20 if not self.small else 16, BLUE)
        self.text(4, 2 if not self.small else 0, title, WHITE, BLUE)
        if self.offline:
            self.fb.fill_rect(self.w - 36, 0, 36, 20 if not self.small else 16, RED)
            self.text(self.w - 34, 2 if not self.small else 0, "离线", WHITE, RED)

    def _message(self, text, colour):
        self._clear(WHITE)
        self._bar("政务服务好差评")
        width = sum(self.font.advance(c) for c in text) * (1 if self.small else 2)
        x = max(0, (self.w - width) // 2)
        self.text(x, self.h // 2 - (8 if self.small else 16), text, colour, WHITE, 1 if self.small else 2)

    def _qr(self, qr, caption):
        """The module matrix at the largest integer scale that fits the right-hand area, quiet zone included."""
        n, bits = codec.unpack_matrix(qr)
        area_w = self.w // 2 if not self.small else self.w - 64
        area_h = self.h - (44 if not self.small else 16)
        scale = max(1, min(area_w, area_h) // (n + 2 * QUIET_ZONE))
        side = (n + 2 * QUIET_ZONE) * scale
        left = self.w - side - (4 if not self.small else 0)
        top = (22 if not self.small else 16)
        self.fb.fill_rect(left, top, side, side, WHITE)
        origin_x, origin_y = left + QUIET_ZONE * scale, top + QUIET_ZONE * scale
        for y in range(n):
            for x in range(n):
                if codec.module(bits, n, x, y):
                    self.fb.fill_rect(origin_x + x * scale, origin_y + y * scale, scale, scale, BLACK)
        if not self.small:
            self.text(left + (side - 64) // 2, top + side + 2, caption, BLACK, WHITE)

    def _show(self, kind):
        self.kind = kind
        self.display.show(kind)
