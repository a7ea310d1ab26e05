# Runs under MicroPython: adds ratings to an outbox forever, acknowledging two of every three, and reports
# each step only after it returned: "C id seq" (written), "A id" (removed); "R id" comes before a removal.
# The test kills it at random instants.
import sys

from outbox import Outbox

Outbox.compact_bytes = int(sys.argv[3])  # small, so kills land in compactions too
box = Outbox(sys.argv[1])
seq = box.next_seq
first = int(sys.argv[2])
for i in range(first, first + 100000):
    rating_id = b"%08x" % i
    box.add(rating_id, b'{"v":1,"k":"rating","seq":%d,"pad":"%s"}' % (seq, b"x" * (i % 50)), seq)
    print("C", rating_id.decode(), seq)
    seq += 1
    if i % 3 != 0:  # two of three acknowledged: the backlog grows, slowly
        oldest = next(box.waiting(1))[0]
        print("R", oldest.decode())  # removing: after a kill here it may be gone or still waiting
        box.remove([oldest])
        print("A", oldest.decode())
