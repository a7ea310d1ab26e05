# Decodes every (topic, payload) record of a fuzz file as the firmware does on a message from the broker:
# check the command mac, then decode against the topic. Prints one line per record: "." accepted, "s" signed
# and accepted, the error code when refused, "!" on any other exception (its traceback goes to stderr).
# Runs on MicroPython and CPython alike.
import struct
import sys

from protocol import codec

KEY = "00112233445566778899aabbccddeeff"


def outcome(topic, payload):
    try:
        name = topic.decode()
        signed = codec.signed_by(name, payload, KEY)
        codec.decode_from(name, payload)
        return "s" if signed else "."
    except codec.ProtocolError as e:
        return e.code
    except UnicodeError:
        return "not_utf8_topic"


def main(path):
    with open(path, "rb") as f:
        while True:
            head = f.read(4)
            if len(head) < 4:
                break
            topic_length, payload_length = struct.unpack("<HH", head)
            topic, payload = f.read(topic_length), f.read(payload_length)
            try:
                result = outcome(topic, payload)
            except Exception as e:  # noqa: BLE001 - what the fuzz test looks for
                sys.print_exception(e) if hasattr(sys, "print_exception") else print(repr(e), file=sys.stderr)
                result = "!"
            sys.stdout.write(result + "\n")


main(sys.argv[1])
