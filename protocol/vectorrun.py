# Runs the test vectors in protocol/vectors/ through the codec and prints one JSON line per case:
# {"file", "name", "result"}. Runs unchanged on CPython and MicroPython, so the tests can compare
# both interpreters' answers with each other and with the expected ones.
#   python3 -m protocol.vectorrun protocol/vectors
#   MICROPYPATH=. micropython protocol/vectorrun.py protocol/vectors
import binascii
import json
import os
import sys

from protocol import codec


def payload_of(case):
    if "payload_hex" in case:
        return binascii.unhexlify(case["payload_hex"])
    if "payload" in case:
        return case["payload"].encode()
    return json.dumps(case["message"]).encode()


def run_message_case(case):
    try:
        payload = payload_of(case)
        if "topic" in case:
            hall, dev, msg = codec.decode_from(case["topic"], payload)
        else:
            msg = codec.decode(payload)
        # Every accepted message must survive a round trip through encode() unchanged.
        again = codec.decode(codec.encode(msg))
        return {"ok": msg, "roundtrip": again == msg}
    except codec.ProtocolError as e:
        return {"error": e.code, "field": e.field}


def run_matrix_case(case):
    rows = [[c == "1" for c in row] for row in case["rows"]]
    packed = codec.pack_matrix(rows)
    n, bits = codec.unpack_matrix(packed)
    same = True
    for y in range(n):
        for x in range(n):
            if codec.module(bits, n, x, y) != rows[y][x]:
                same = False
    return {"packed": packed, "unpacked_equal": same}


def main(folder):
    for name in sorted(os.listdir(folder)):
        if not name.endswith(".json"):
            continue
        with open(folder + "/" + name) as f:
            doc = json.load(f)
        run = run_matrix_case if name == "matrix.json" else run_message_case
        for case in doc["cases"]:
            print(json.dumps({"file": name, "name": case["name"], "result": run(case)}))


if __name__ == "__main__":
    main(sys.argv[1])
