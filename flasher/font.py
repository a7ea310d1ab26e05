"""The device's bitmap font, built from a real CJK font at `make firmware` time.

Covers ASCII, GB2312 level 1 (the 3,755 common hanzi) and every character the firmware's own texts use,
as 16x16 one-bit glyphs. The device reads glyphs from the file as it needs them (firmware/font.py).
Format: b"HCPF", width (u8), height (u8), count (u16 LE), the code points (u16 LE each, ascending), then
each glyph as MONO_HLSB rows (width/8 bytes a row).
"""
from __future__ import annotations

import struct
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

CJK_FONTS = [Path("/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc"),
             Path("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc")]
SIZE = 16


class FontError(RuntimeError):
    """No CJK font to build from."""


def gb2312_level1() -> list[str]:
    chars = []
    for high in range(0xB0, 0xD8):
        for low in range(0xA1, 0xFF):
            try:
                chars.append(bytes([high, low]).decode("gb2312"))
            except UnicodeDecodeError:
                continue  # the last row of level 1 ends early
    return chars


def characters(extra_texts: list[str]) -> list[str]:
    wanted = {chr(c) for c in range(0x20, 0x7F)} | set(gb2312_level1())
    for text in extra_texts:
        wanted |= {c for c in text if ord(c) >= 0x20 and ord(c) < 0x10000}
    return sorted(wanted)


def source_font() -> Path:
    for path in CJK_FONTS:
        if path.exists():
            return path
    raise FontError("no CJK font found; install Debian's fonts-wqy-zenhei (make firmware does)")


def render(char: str, face: ImageFont.FreeTypeFont) -> bytes:
    image = Image.new("1", (SIZE, SIZE), 0)
    ImageDraw.Draw(image).text((0, 0), char, font=face, fill=1)
    return image.tobytes()  # mode "1" rows, MSB first: MONO_HLSB


def build(out: Path, extra_texts: list[str]) -> int:
    """Write the font file; return the number of glyphs."""
    face = ImageFont.truetype(str(source_font()), SIZE)
    chars = characters(extra_texts)
    index = b"".join(struct.pack("<H", ord(c)) for c in chars)
    glyphs = b"".join(render(c, face) for c in chars)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(b"HCPF" + struct.pack("<BBH", SIZE, SIZE, len(chars)) + index + glyphs)
    return len(chars)


def firmware_texts(firmware: Path) -> list[str]:
    """Every string literal's characters in the firmware sources (screens, errors), so none is missing."""
    return [path.read_text() for path in sorted(firmware.rglob("*.py"))]
