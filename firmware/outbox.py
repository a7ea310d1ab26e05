# The rating outbox on flash: a press is written here before the thank-you screen shows, and leaves only
# when the gateway's application ack names it. A power cut at any instant loses no confirmed press and
# never corrupts the store.
#
# One append-only log of framed records:  A5 | type | length (2, LE) | crc32 (4, LE) | payload
#   R  a rating: its 8-byte id, then the encoded message as published
#   D  done: the 8-byte id of a rating the gateway acknowledged (or rejected)
#   M  meta: the next sequence number (4, LE); first record after a compaction
# Recovery reads records until the first torn or corrupt one; everything before it is intact, and a
# record is confirmed only once its write (and flush) returned. Compaction writes the live records to a
# new file and renames it over the log: atomic on littlefs (and POSIX), so either version survives.
# RAM holds only an index (id and file offset per waiting rating), never the ratings themselves.
import array
import binascii
import os
import struct

MAGIC = 0xA5
RATING, DONE, META = 0x52, 0x44, 0x4D
HEADER = 8
DEAD = 0xFFFFFFFF


class OutboxFull(Exception):
    pass


class Outbox:
    capacity = 1000  # ratings waiting for an ack; at least a day of a busy window offline
    compact_bytes = 64 * 1024  # log growth since the last compaction past which acked records are squeezed out

    def __init__(self, path):
        self.path = path
        self.tmp = path + ".new"
        self.next_seq = 1
        # The index: 8 bytes of id and a log offset per rating (DEAD once acknowledged), 12 bytes a slot,
        # allocated once at boot so a long offline stretch cannot fragment the heap.
        self._slots = self.capacity + self.capacity // 4
        self._ids = bytearray(8 * self._slots)
        self._offsets = array.array("I", bytes(4 * self._slots))
        self._used = 0  # slots in use, live or dead, in log order
        self._live = 0
        self._size = 0
        self._compacted = 0  # log size right after the last compaction: what the waiting ratings take
        self._recover()

    def __len__(self):
        return self._live

    def add(self, rating_id, payload, seq):
        """Write a rating durably. Raise OutboxFull when `capacity` ratings already wait."""
        if self._live >= self.capacity:
            raise OutboxFull()
        if self._used == self._slots:  # the rest are acknowledged: squeeze them out
            self.compact()
        offset = self._append(RATING, rating_id + payload)
        self._index(rating_id, offset)
        if seq >= self.next_seq:
            self.next_seq = seq + 1

    def waiting(self, limit):
        """Yield up to `limit` waiting ratings, oldest first, as (id, payload), one at a time."""
        if not self._live:
            return
        with open(self.path, "rb") as f:
            for i in range(self._used):
                if limit <= 0:
                    return
                offset = self._offsets[i]
                if offset != DEAD:
                    f.seek(offset)
                    body = _read(f)[1]
                    limit -= 1
                    yield body[:8], body[8:]

    def remove(self, rating_ids):
        """Forget acknowledged ratings; ids that are not waiting are ignored. Returns how many were removed."""
        removed = 0
        for rating_id in rating_ids:
            i = self._find(rating_id)
            if i >= 0:
                self._append(DONE, rating_id)
                self._offsets[i] = DEAD
                self._live -= 1
                removed += 1
        # Compacting whenever the log is big would copy a long backlog on every ack; wait for enough garbage.
        if removed and self._size - self._compacted > self.compact_bytes:
            self.compact()
        return removed

    def compact(self):
        """Rewrite the log with only the waiting ratings, then swap it in atomically."""
        kept = 0
        with open(self.path, "rb") as old, open(self.tmp, "wb") as f:
            size = _write(f, META, struct.pack("<I", self.next_seq))
            for i in range(self._used):  # one record in RAM at a time; the index slides down in place
                offset = self._offsets[i]
                if offset != DEAD:
                    old.seek(offset)
                    self._ids[kept * 8:kept * 8 + 8] = self._ids[i * 8:i * 8 + 8]
                    self._offsets[kept] = size
                    size += _write(f, RATING, _read(old)[1])
                    kept += 1
            f.flush()
        os.rename(self.tmp, self.path)
        self._used, self._size = kept, size
        self._compacted = size

    def _squeeze(self):
        """Drop acknowledged slots from the index (the log keeps their records until the next compaction)."""
        kept = 0
        for i in range(self._used):
            if self._offsets[i] != DEAD:
                self._ids[kept * 8:kept * 8 + 8] = self._ids[i * 8:i * 8 + 8]
                self._offsets[kept] = self._offsets[i]
                kept += 1
        self._used = kept

    def _index(self, rating_id, offset):
        self._ids[self._used * 8:self._used * 8 + 8] = rating_id
        self._offsets[self._used] = offset
        self._used += 1
        self._live += 1

    def _find(self, rating_id):
        start = 0
        while True:
            at = self._ids.find(rating_id, start)
            if at < 0:
                return -1
            if at // 8 >= self._used:
                return -1
            if at % 8 == 0 and self._offsets[at // 8] != DEAD:
                return at // 8
            start = at + 1

    def _append(self, kind, payload):
        with open(self.path, "ab") as f:
            offset = self._size
            self._size += _write(f, kind, payload)
            f.flush()
        return offset

    def _recover(self):
        _remove(self.tmp)  # a compaction that never reached its rename
        try:
            f = open(self.path, "rb")
        except OSError:
            return
        with f:
            while True:
                offset = self._size
                try:
                    kind, body = _read(f)
                except ValueError:  # a torn or corrupt tail: nothing after it was ever confirmed
                    break
                self._size = f.tell()
                if kind == RATING:
                    if self._used == self._slots:
                        self._squeeze()
                    self._index(body[:8], offset)
                    self.next_seq = max(self.next_seq, _seq_of(body[8:]) + 1)
                elif kind == DONE:
                    i = self._find(body)
                    if i >= 0:
                        self._offsets[i] = DEAD
                        self._live -= 1
                elif kind == META:
                    self.next_seq = max(self.next_seq, struct.unpack("<I", body)[0])
        if self._size != _file_size(self.path):
            self.compact()  # drop the torn tail before anything is appended after it


def _write(f, kind, payload):
    head = struct.pack("<BBHI", MAGIC, kind, len(payload), binascii.crc32(payload, kind) & 0xFFFFFFFF)
    f.write(head)
    f.write(payload)
    return HEADER + len(payload)


def _read(f):
    head = f.read(HEADER)
    if len(head) < HEADER:
        raise ValueError("end")
    magic, kind, length, crc = struct.unpack("<BBHI", head)
    if magic != MAGIC:
        raise ValueError("bad magic")
    body = f.read(length)
    if len(body) < length or binascii.crc32(body, kind) & 0xFFFFFFFF != crc:
        raise ValueError("torn record")
    return kind, body


def _seq_of(payload):
    # The sequence number sits in the message as "seq":N; scanning for it avoids parsing JSON at boot.
    at = payload.find(b'"seq":')
    if at < 0:
        return 0
    end = at + 6
    while end < len(payload) and 48 <= payload[end] <= 57:
        end += 1
    return int(payload[at + 6:end] or b"0")


def _file_size(path):
    try:
        return os.stat(path)[6]
    except OSError:
        return 0


def _remove(path):
    try:
        os.remove(path)
    except OSError:
        pass
