# Runs under MicroPython: for each cut length from 0 to the log's size, recovers an outbox from the log truncated there
# (a power cut mid-write, as the storage sees it) and prints what survived.
import json
import sys

from outbox import Outbox

source, work = sys.argv[1], sys.argv[2]
with open(source, "rb") as f:
    data = f.read()
for cut in range(len(data) + 1):
    with open(work, "wb") as f:
        f.write(data[:cut])
    box = Outbox(work)
    print(json.dumps({"cut": cut, "waiting": [i.decode() for i, _ in box.waiting(len(box))],
                      "next_seq": box.next_seq}))
