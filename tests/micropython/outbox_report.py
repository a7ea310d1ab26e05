# Runs under MicroPython: opens (recovers) an outbox and prints its state as JSON.
import json
import sys

from outbox import Outbox

box = Outbox(sys.argv[1])
ok = True
for _, payload in box.waiting(len(box)):  # read back every waiting payload, one at a time
    ok = ok and payload.startswith(b'{"v":1') and payload.endswith(b"}")
print(json.dumps({"waiting": [i.decode() for i, _ in box.waiting(len(box))], "next_seq": box.next_seq,
                  "payloads_ok": ok}))
