# Glyphs from the bitmap font file on flash (built by `make firmware`, see flasher/font.py), read as needed:
# the 130 KB of glyphs never sit in RAM, only a handful of recent ones.
import struct

import framebuf


class Font:
    cache_size = 48

    def __init__(self, path):
        self._file = open(path, "rb")
        magic, self.width, self.height, self.count = struct.unpack("<4sBBH", self._file.read(8))
        if magic != b"HCPF":
            raise ValueError("not a font file")
        self._glyph_bytes = self.width * self.height // 8
        self._data_at = 8 + 2 * self.count
        self._cache = {}

    def advance(self, char):
        return self.width // 2 if ord(char) < 0x80 else self.width

    def glyph(self, char):
        """The glyph as a MONO_HLSB FrameBuffer, or None if the font lacks the character."""
        code = ord(char)
        found = self._cache.get(code)
        if found is None:
            at = self._find(code)
            if at < 0:
                return None
            self._file.seek(self._data_at + at * self._glyph_bytes)
            found = framebuf.FrameBuffer(bytearray(self._file.read(self._glyph_bytes)), self.width, self.height,
                                         framebuf.MONO_HLSB)
            if len(self._cache) >= self.cache_size:
                self._cache.clear()
            self._cache[code] = found
        return found

    def _find(self, code):
        lo, hi = 0, self.count - 1
        while lo <= hi:  # binary search over the code points in the file
            mid = (lo + hi) // 2
            self._file.seek(8 + 2 * mid)
            value = struct.unpack("<H", self._file.read(2))[0]
            if value == code:
                return mid
            if value < code:
                lo = mid + 1
            else:
                hi = mid - 1
        return -1
