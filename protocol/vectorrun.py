# Runs the test vectors in protocol/vectors/ through the codec and prints one JSON line per case:
# {"file", "name", "result"}. matrix.json packs QR matrices, signed.json signs and checks commands
# (codec.sign, codec.signed_by), every other file decodes messages. Runs unchanged on CPython and MicroPython,
# so the tests can compare both interpreters' answers with each other and with the expected ones.
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


def run_signed_case(case):
    # A command key signs a down message (expect "signed": the exact bytes), or checks one (expect "signed_by").
    payload = payload_of(case)
    if "signed_by" in case["expect"]:
        return {"signed_by": codec.signed_by(case["topic"], payload, case["key"])}
    try:
        signed = codec.sign(case["topic"], payload, case["key"])
    except codec.ProtocolError as e:
        return {"error": e.code, "field": e.field}
    # What the device does next: check the mac, then decode; the mac field must not change the message.
    same = codec.decode_from(case["topic"], signed) == codec.decode_from(case["topic"], payload)
    return {"signed": signed.decode(), "signed_by": codec.signed_by(case["topic"], signed, case["key"]),
            "same_message": same}


RUNNERS = {"matrix.json": run_matrix_case, "signed.json": run_signed_case}


def main(folder):
    for name in sorted(os.listdir(folder)):
        if not name.endswith(".json"):
            continue
        with open(folder + "/" + name) as f:
            doc = json.load(f)
        run = RUNNERS.get(name, run_message_case)
        for case in doc["cases"]:
            print(json.dumps({"file": name, "name": case["name"], "result": run(case)}))


if __name__ == "__main__":
    main(sys.argv[1])
