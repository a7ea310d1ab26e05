# The device <-> gateway contract in code (see PROTOCOL.md).
# Runs unchanged on CPython and MicroPython: no dataclasses, no typing, no f-strings with `=`,
# nothing CPython-only. The firmware build copies this file onto the device.
import binascii
import hashlib
import json
import sys

VERSION = 1
MAX_MESSAGE = 1024  # bytes of payload, any kind
MAX_DEPTH = 4  # JSON nesting of any accepted message
TOPIC_ROOT = "hcp/v1"
UP = "up"  # device -> gateway
DOWN = "down"  # gateway -> device

# Levels, best first. The wire carries the name; upstream codes belong to the upstream adapter.
LEVELS = ("very_satisfied", "satisfied", "basic", "dissatisfied", "very_dissatisfied")
LEVEL_LABELS = ("非常满意", "满意", "基本满意", "不满意", "非常不满意")
BAD_LEVELS = ("dissatisfied", "very_dissatisfied")  # 差评

# Reason codes for a 差评 (docs/upstream.md); labels are what the device shows.
REASONS = (
    ("501", "服务态度差"),
    ("502", "办事效率低"),
    ("503", "流程繁琐"),
    ("504", "政策解释不清"),
    ("505", "多次跑动"),
    ("599", "其他"),
)
REASON_CODES = tuple(code for code, _ in REASONS)

# Error codes, shared by reject messages and the test vectors.
BAD_JSON = "bad_json"
TOO_LARGE = "too_large"
BAD_VERSION = "bad_version"
BAD_KIND = "bad_kind"
MISSING_FIELD = "missing_field"
BAD_FIELD = "bad_field"
BAD_TOPIC = "bad_topic"
TOPIC_MISMATCH = "topic_mismatch"

_NATIVE_STRICT_JSON = sys.implementation.name == "cpython"
_IDENT_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"
_HEX_CHARS = "0123456789abcdef"
_B64_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


class ProtocolError(Exception):
    """A message or topic that breaks the contract. `code` is one of the error codes above."""

    def __init__(self, code, field=None, detail=""):
        super().__init__(code, field, detail)
        self.code = code
        self.field = field
        self.detail = detail

    def __str__(self):
        where = " (" + self.field + ")" if self.field else ""
        return self.code + where + (": " + self.detail if self.detail else "")


# ---- field checks: each returns None when the value fits, else a short reason ----

def _ident(maxlen):
    def check(v):
        if type(v) is not str or not 0 < len(v) <= maxlen:
            return "want 1.." + str(maxlen) + " characters"
        for c in v:
            if c not in _IDENT_CHARS:
                return "only A-Z a-z 0-9 _ - allowed"
    return check


def _hex(length):
    def check(v):
        if type(v) is not str or len(v) != length:
            return "want " + str(length) + " lowercase hex digits"
        for c in v:
            if c not in _HEX_CHARS:
                return "want " + str(length) + " lowercase hex digits"
    return check


def _int(lo, hi):
    def check(v):
        if type(v) is not int or not lo <= v <= hi:
            return "want an integer " + str(lo) + ".." + str(hi)
    return check


def _text(maxlen):
    def check(v):
        if type(v) is not str or len(v) > maxlen:
            return "want text of at most " + str(maxlen) + " characters"
        for c in v:
            o = ord(c)
            if o < 0x20 or 0xD800 <= o <= 0xDFFF:
                return "control character or lone surrogate"
    return check


def _choice(options):
    def check(v):
        if v not in options or type(v) is not type(options[0]):
            return "want one of " + ",".join(options)
    return check


def _bool(v):
    if type(v) is not bool:
        return "want true or false"


def _optional(inner):
    def check(v):
        if v is not None:
            return inner(v)
    return check


def _list_of(inner, lo, hi):
    def check(v):
        if type(v) is not list or not lo <= len(v) <= hi:
            return "want a list of " + str(lo) + ".." + str(hi) + " items"
        for item in v:
            why = inner(item)
            if why:
                return why
    return check


def _b64_length(n_bytes):
    return (n_bytes + 2) // 3 * 4


def _matrix(v):
    # A QR module matrix: {"n": side, "b": base64 of the n*n bits, row-major, MSB first}.
    if type(v) is not dict or type(v.get("n")) is not int or type(v.get("b")) is not str:
        return "want {n: side, b: base64 bits}"
    n, b = v["n"], v["b"]
    if not 21 <= n <= 57 or (n - 17) % 4:
        return "side must be a QR size 21..57 (versions 1-10)"
    if len(b) != _b64_length((n * n + 7) // 8):
        return "bit string length does not match the side"
    body = b.rstrip("=")
    if len(b) - len(body) > 2:
        return "bad base64 padding"
    for c in body:
        if c not in _B64_CHARS:
            return "bad base64 character"


ID = _hex(16)
DEVICE = _ident(32)
CASE = _ident(50)
EPOCH = _int(0, 2**40)

# Each kind: (direction, {field: (check, required)}). Unknown fields are dropped (forward compatible).
SCHEMAS = {
    "rating": (UP, {
        "dev": (DEVICE, True),
        "boot": (_hex(8), True),
        "seq": (_int(1, 2**31 - 1), True),
        "id": (ID, True),
        "t": (_optional(EPOCH), True),  # null while the device clock is not yet synced
        "ms": (_int(0, 2**53), True),  # milliseconds since boot
        "case": (_optional(CASE), True),  # null: a press linked to no case
        "lvl": (_choice(LEVELS), True),
        "pub": (_bool, True),
        "rsn": (_list_of(_choice(REASON_CODES), 0, 3), False),
    }),
    "status": (UP, {
        "dev": (DEVICE, True),
        "state": (_choice(("online", "offline")), True),
        "boot": (_hex(8), False),
        "fw": (_text(16), False),
        "up": (_int(0, 2**40), False),
        "heap": (_int(0, 2**31), False),
        "rssi": (_optional(_int(-127, 0)), False),
        "outbox": (_int(0, 2**31), False),
        "err": (_optional(_text(80)), False),
        "cfg": (_optional(_int(0, 2**31)), False),
        "t": (_optional(EPOCH), False),
    }),
    "ack": (DOWN, {
        "ids": (_list_of(ID, 1, 32), True),
    }),
    "reject": (DOWN, {
        "ref": (_optional(ID), True),
        "code": (_ident(32), True),
        "detail": (_text(200), False),
    }),
    "prompt": (DOWN, {
        "case": (CASE, True),
        "text": (_text(64), True),
        "qr": (_matrix, True),
        "ttl": (_int(3, 600), True),
    }),
    "cancel": (DOWN, {
        "case": (CASE, True),
    }),
    "config": (DOWN, {
        "ver": (_int(0, 2**31), True),
        "hall": (_text(32), False),
        "window": (_text(16), False),
        "staff": (_text(16), False),
        "staff_no": (_ident(16), False),
        "policy": (_choice(("ignore", "record")), False),
        "prompt_s": (_int(3, 600), False),
        "reason_s": (_int(3, 120), False),
        "thanks_s": (_int(1, 60), False),
        "bright": (_int(0, 100), False),
        "volume": (_int(0, 100), False),
        "reasons": (_list_of(_choice(REASON_CODES), 0, 5), False),
        "idle_qr": (_optional(_matrix), False),
    }),
    "time": (DOWN, {
        "t": (EPOCH, True),
        "tz": (_int(-720, 840), True),  # minutes east of UTC
    }),
}


def validate(msg):
    """Check a message dict against its kind's schema; return the normalised copy."""
    if type(msg) is not dict:
        raise ProtocolError(BAD_JSON, None, "a message is a JSON object")
    if "v" not in msg:
        raise ProtocolError(MISSING_FIELD, "v")
    if msg["v"] != VERSION or type(msg["v"]) is not int:
        raise ProtocolError(BAD_VERSION, "v", "this side speaks version " + str(VERSION))
    kind = msg.get("k")
    if type(kind) is not str or kind not in SCHEMAS:
        raise ProtocolError(BAD_KIND, "k", "unknown message kind")
    fields = SCHEMAS[kind][1]
    out = {"v": VERSION, "k": kind}
    for name in sorted(fields):
        check, required = fields[name]
        if name not in msg:
            if required:
                raise ProtocolError(MISSING_FIELD, name)
            continue
        why = check(msg[name])
        if why:
            raise ProtocolError(BAD_FIELD, name, why)
        out[name] = msg[name]
    if kind == "rating" and out.get("rsn") and out["lvl"] not in BAD_LEVELS:
        raise ProtocolError(BAD_FIELD, "rsn", "reasons go only with a bad rating")
    return out


def encode(msg):
    """Validate and serialise a message to compact UTF-8 JSON bytes."""
    data = _dumps(validate(msg)).encode()
    if len(data) > MAX_MESSAGE:
        raise ProtocolError(TOO_LARGE, None, str(len(data)) + " bytes")
    return data


def decode(payload, kind=None):
    """Parse and validate a payload (bytes). With `kind`, the message must be of that kind."""
    if len(payload) > MAX_MESSAGE:
        raise ProtocolError(TOO_LARGE, None, str(len(payload)) + " bytes")
    msg = validate(_loads(payload))
    if kind is not None and msg["k"] != kind:
        raise ProtocolError(BAD_KIND, "k", "expected " + kind)
    return msg


def _dumps(obj):
    if _NATIVE_STRICT_JSON:
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)  # pyright: ignore[reportCallIssue] CPython-only argument
    return json.dumps(obj, separators=(",", ":"))


def _loads(payload):
    payload = bytes(payload)
    obj = _loads_natively(payload) if _NATIVE_STRICT_JSON else _loads_strictly(payload)
    if type(obj) is not dict:
        raise ProtocolError(BAD_JSON, None, "a message is a JSON object")
    return obj


def _loads_natively(payload):
    # CPython's decoder and parser are strict already, except that json accepts NaN/Infinity (refused here)
    # and any depth (limited here).
    try:
        text = payload.decode("utf-8")
    except Exception:
        raise ProtocolError(BAD_JSON, None, "not UTF-8") from None
    try:
        obj = json.loads(text, parse_constant=_no_constant)  # pyright: ignore[reportCallIssue] CPython-only argument
    except (ValueError, RecursionError):
        raise ProtocolError(BAD_JSON, None, "not valid JSON") from None
    if _depth(obj) > MAX_DEPTH:
        raise ProtocolError(BAD_JSON, None, "nested too deep")
    return obj


def _loads_strictly(payload):
    # MicroPython's UTF-8 decoder and JSON parser accept what RFC 3629 and RFC 8259 forbid (overlong forms,
    # encoded surrogates, trailing commas, leading zeros, raw control characters): scan strictly first, so
    # both sides accept exactly the same payloads. Imported here, not at the top: CPython never loads the
    # scanner, and a device only once it decodes its first message.
    from protocol import strictjson

    strictjson.check_utf8(payload)
    try:
        text = payload.decode("utf-8")
    except Exception:
        raise ProtocolError(BAD_JSON, None, "not UTF-8") from None
    strictjson.scan_json(text)
    try:
        return json.loads(text)
    except ValueError:
        raise ProtocolError(BAD_JSON, None, "not valid JSON") from None


def _no_constant(name):
    raise ValueError(name)


def _depth(obj):
    if type(obj) is dict:
        return 1 + max([_depth(v) for v in obj.values()] or [0])
    if type(obj) is list:
        return 1 + max([_depth(v) for v in obj] or [0])
    return 0


# ---- topics: hcp/v1/{hall}/{device}/{up|down}/{kind} ----

HALL = _ident(32)


def topic(hall, dev, kind):
    """The topic a message of `kind` travels on for this hall and device."""
    return TOPIC_ROOT + "/" + hall + "/" + dev + "/" + SCHEMAS[kind][0] + "/" + kind


def subscription(hall, dev, direction):
    """A wildcard filter: one device's `down` topics, or every device's `up` topics (dev="+")."""
    return TOPIC_ROOT + "/" + hall + "/" + dev + "/" + direction + "/+"


def parse_topic(name):
    """Split a topic into (hall, dev, kind); raise ProtocolError(BAD_TOPIC) if it is not ours."""
    parts = name.split("/")
    if len(parts) != 6 or parts[0] + "/" + parts[1] != TOPIC_ROOT:
        raise ProtocolError(BAD_TOPIC, None, "not an hcp/v1 topic")
    hall, dev, direction, kind = parts[2], parts[3], parts[4], parts[5]
    if HALL(hall) or DEVICE(dev):
        raise ProtocolError(BAD_TOPIC, None, "bad hall or device id")
    if kind not in SCHEMAS or SCHEMAS[kind][0] != direction:
        raise ProtocolError(BAD_TOPIC, None, "unknown kind for direction " + direction)
    return hall, dev, kind


def decode_from(name, payload):
    """Decode a payload that arrived on topic `name`; the kind and device must match the topic."""
    hall, dev, kind = parse_topic(name)
    msg = decode(payload, kind)
    if "dev" in msg and msg["dev"] != dev:
        raise ProtocolError(TOPIC_MISMATCH, "dev", "device id differs from the topic")
    return hall, dev, msg


# ---- commands only the gateway can sign ----
# A down message may end with ,"mac":"<32 hex>"}: HMAC-SHA256 over the topic, a newline and the message
# without it, truncated to 128 bits, keyed with the device's command key (issued at provisioning). The mac
# covers the exact bytes sent, so nothing depends on how either side orders JSON keys.

_MAC_HEAD = b',"mac":"'
_MAC_LENGTH = len(_MAC_HEAD) + 32 + 2  # ,"mac":"<32 hex>"}
SIGNED_OVERHEAD = _MAC_LENGTH - 1  # what signing adds to a payload; a signed one must fit MAX_MESSAGE too


def _hmac_sha256(key, data):
    if len(key) > 64:
        key = hashlib.sha256(key).digest()
    key = key + bytes(64 - len(key))
    inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
    inner.update(data)
    outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))
    outer.update(inner.digest())
    return outer.digest()


def _mac(key_hex, topic, body):
    return binascii.hexlify(_hmac_sha256(binascii.unhexlify(key_hex), topic.encode() + b"\n" + body)[:16])


def sign(topic, payload, key_hex):
    """The payload (an encoded message) with its mac appended for the device whose key is `key_hex`."""
    if len(payload) + SIGNED_OVERHEAD > MAX_MESSAGE:
        raise ProtocolError(TOO_LARGE, None, "no room for the mac")
    return payload[:-1] + _MAC_HEAD + _mac(key_hex, topic, payload) + b'"}'


def signed_by(topic, payload, key_hex):
    """True when `payload` carries a mac made with `key_hex` for this topic (compared in full, in constant
    time over its 32 characters)."""
    if len(payload) <= _MAC_LENGTH or payload[-_MAC_LENGTH:-34] != _MAC_HEAD or payload[-2:] != b'"}':
        return False
    body = payload[:-_MAC_LENGTH] + b"}"
    expected = _mac(key_hex, topic, body)
    given = payload[-34:-2]
    difference = 0
    for a, b in zip(expected, given):
        difference |= a ^ b
    return difference == 0


# ---- QR module matrix, bit-packed ----

def pack_matrix(rows):
    """Pack a square matrix of truthy/falsy modules into the wire form {"n", "b"}."""
    n = len(rows)
    bits = bytearray((n * n + 7) // 8)
    i = 0
    for row in rows:
        for dark in row:
            if dark:
                bits[i >> 3] |= 0x80 >> (i & 7)
            i += 1
    return {"n": n, "b": binascii.b2a_base64(bytes(bits)).decode().strip()}


def unpack_matrix(qr):
    """Return (side, bits) from the wire form; use module() to read one module."""
    return qr["n"], binascii.a2b_base64(qr["b"])


def module(bits, n, x, y):
    """True when the module at column x, row y is dark."""
    i = y * n + x
    return bool(bits[i >> 3] & (0x80 >> (i & 7)))
