# The strict UTF-8 and JSON checks the codec needs on MicroPython only (PROTOCOL.md, "What a receiver does
# with bad input"): MicroPython's UTF-8 decoder and JSON parser are lenient, so the codec scans a payload here
# before handing it to them, and both interpreters accept exactly the same payloads. Kept out of codec.py so
# CPython never imports it and a device loads it only when it decodes its first message.
# Runs unchanged on CPython and MicroPython (the tests compare it with CPython's own decoder and parser).
# The firmware build copies this file onto the device beside codec.py.
from protocol.codec import BAD_JSON, MAX_DEPTH, ProtocolError


def check_utf8(data):
    """Raise ProtocolError(BAD_JSON) unless `data` is well-formed UTF-8 (RFC 3629).

    MicroPython's decoder lets through overlong forms, surrogates and code points past U+10FFFF.
    """
    i, end = 0, len(data)
    while i < end:
        b = data[i]
        if b < 0x80:
            i += 1
            continue
        if 0xC2 <= b <= 0xDF:
            n, lo, hi = 1, 0x80, 0xBF
        elif 0xE0 <= b <= 0xEF:
            n = 2
            lo = 0xA0 if b == 0xE0 else 0x80  # no overlong forms
            hi = 0x9F if b == 0xED else 0xBF  # no surrogates
        elif 0xF0 <= b <= 0xF4:
            n = 3
            lo = 0x90 if b == 0xF0 else 0x80
            hi = 0x8F if b == 0xF4 else 0xBF  # nothing past U+10FFFF
        else:
            raise _bad("not UTF-8")
        if i + n >= end:
            raise _bad("not UTF-8")
        if not lo <= data[i + 1] <= hi:
            raise _bad("not UTF-8")
        for k in range(2, n + 1):
            if not 0x80 <= data[i + k] <= 0xBF:
                raise _bad("not UTF-8")
        i += n + 1


_WS = " \t\n\r"
_DIGITS = "0123456789"
_ESCAPES = '"\\/bfnrtu'


def scan_json(text):
    """Raise ProtocolError(BAD_JSON) unless `text` is one strict RFC 8259 JSON value."""
    end = len(text)
    i = _skip_ws(text, 0, end)
    i = _scan_value(text, i, end, 1)
    if _skip_ws(text, i, end) != end:
        raise ProtocolError(BAD_JSON, None, "trailing data")


def _bad(why):
    return ProtocolError(BAD_JSON, None, why)


def _skip_ws(s, i, end):
    while i < end and s[i] in _WS:
        i += 1
    return i


def _scan_value(s, i, end, depth):
    if i >= end:
        raise _bad("unexpected end")
    c = s[i]
    if c == "{" or c == "[":
        if depth > MAX_DEPTH:
            raise _bad("nested too deep")
        return _scan_container(s, i, end, depth)
    if c == '"':
        return _scan_string(s, i, end)
    if c == "-" or c in _DIGITS:
        return _scan_number(s, i, end)
    for word in ("true", "false", "null"):
        if s[i:i + len(word)] == word:
            return i + len(word)
    raise _bad("unexpected character")


def _scan_container(s, i, end, depth):
    close = "}" if s[i] == "{" else "]"
    i = _skip_ws(s, i + 1, end)
    if i < end and s[i] == close:
        return i + 1
    while True:
        if close == "}":
            if i >= end or s[i] != '"':
                raise _bad("object key must be a string")
            i = _skip_ws(s, _scan_string(s, i, end), end)
            if i >= end or s[i] != ":":
                raise _bad("missing colon")
            i = _skip_ws(s, i + 1, end)
        i = _skip_ws(s, _scan_value(s, i, end, depth + 1), end)
        if i < end and s[i] == ",":
            i = _skip_ws(s, i + 1, end)
            continue
        if i < end and s[i] == close:
            return i + 1
        raise _bad("missing comma or " + close)


def _scan_string(s, i, end):
    i += 1
    while i < end:
        c = s[i]
        if c == '"':
            return i + 1
        if c == "\\":
            if i + 1 >= end or s[i + 1] not in _ESCAPES:
                raise _bad("bad escape")
            if s[i + 1] == "u":
                hexes = s[i + 2:i + 6]
                if len(hexes) != 4 or any(h not in "0123456789abcdefABCDEF" for h in hexes):
                    raise _bad("bad unicode escape")
                i += 6
                continue
            i += 2
            continue
        if ord(c) < 0x20:
            raise _bad("raw control character in string")
        i += 1
    raise _bad("unterminated string")


def _scan_number(s, i, end):
    if s[i] == "-":
        i += 1
    if i < end and s[i] == "0":
        i += 1
    elif i < end and s[i] in _DIGITS:
        i = _scan_digits(s, i, end)
    else:
        raise _bad("bad number")
    if i < end and s[i] == ".":
        i += 1
        if i >= end or s[i] not in _DIGITS:
            raise _bad("bad fraction")
        i = _scan_digits(s, i, end)
    if i < end and s[i] in "eE":
        i += 1
        if i < end and s[i] in "+-":
            i += 1
        if i >= end or s[i] not in _DIGITS:
            raise _bad("bad exponent")
        i = _scan_digits(s, i, end)
    return i


def _scan_digits(s, i, end):
    while i < end and s[i] in _DIGITS:
        i += 1
    return i
