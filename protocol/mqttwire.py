# MQTT 3.1.1 packets as bytes: the few the evaluator needs, built and read the same way by the firmware's
# client (firmware/mqtt.py, MicroPython) and the simulator's virtual devices (simulator/virtual.py, CPython).
# Runs unchanged on both interpreters: only struct and bytes.
import struct

CONNECT, CONNACK, PUBLISH, PUBACK, SUBSCRIBE, SUBACK = 0x10, 0x20, 0x30, 0x40, 0x82, 0x90
PINGREQ, PINGRESP, DISCONNECT = 0xC0, 0xD0, 0xE0
PING = bytes([PINGREQ, 0])
GOODBYE = bytes([DISCONNECT, 0])


def string(data):
    return struct.pack("!H", len(data)) + data


def length(n):
    """The variable-length 'remaining length' field."""
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def connect(client_id, keepalive_s, clean, will=None, user=None, password=None):
    """CONNECT; `will` is (topic, message, retain, qos) or None; ids, names and passwords are str."""
    flags = 0x02 if clean else 0
    payload = string(client_id.encode())
    if will:
        topic, message, retain, qos = will
        flags |= 0x04 | (qos << 3) | (0x20 if retain else 0)
        payload += string(topic) + string(message)
    if user:
        flags |= 0x80
        payload += string(user.encode())
        if password:
            flags |= 0x40
            payload += string(password.encode())
    body = string(b"MQTT") + bytes([4, flags]) + struct.pack("!H", keepalive_s) + payload
    return bytes([CONNECT]) + length(len(body)) + body


def refused(kind, data):
    """None when a CONNACK accepts the connection, else why not."""
    if kind != CONNACK or len(data) != 2:
        return "no CONNACK"
    return None if data[1] == 0 else "broker refused: code %d" % data[1]


def publish(topic, payload, pid=0, retain=False):
    """PUBLISH at QoS 1 when `pid` is given, else QoS 0."""
    head = PUBLISH | (2 if pid else 0) | (1 if retain else 0)
    body = string(topic) + (struct.pack("!H", pid) if pid else b"")
    return bytes([head]) + length(len(body) + len(payload)) + body + payload


def subscribe(pid, subscriptions):
    """SUBSCRIBE to [(topic bytes, qos)]."""
    body = struct.pack("!H", pid)
    for topic, qos in subscriptions:
        body += string(topic) + bytes([qos])
    return bytes([SUBSCRIBE]) + length(len(body)) + body


def received(kind, data):
    """A PUBLISH packet's (topic, payload, retained, the PUBACK to send or None)."""
    n = struct.unpack_from("!H", data)[0]
    topic = bytes(data[2:2 + n])
    at = 2 + n
    ack = None
    if (kind >> 1) & 3:
        ack = bytes([PUBACK, 2]) + bytes(data[at:at + 2])
        at += 2
    return topic, bytes(data[at:]), bool(kind & 1), ack


def split(buffer):
    """The first whole packet in `buffer` as (kind, data, bytes used), or None while it is incomplete."""
    value, shift, at = 0, 0, 1
    while True:
        if at >= len(buffer):
            return None
        byte = buffer[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
        if shift > 21:
            raise ValueError("bad packet length")
    if len(buffer) < at + value:
        return None
    return buffer[0], bytes(buffer[at:at + value]), at + value
