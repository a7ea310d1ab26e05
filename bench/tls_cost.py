# Runs on the MicroPython unix port (bench/firmware_tls.py): what a TLS connection to the hall broker costs
# the firmware. MicroPython heap (gc) for the context and the stream objects; process memory (VmRSS) for
# mbedTLS's own buffers, which on the ESP32 come from the IDF heap beside MicroPython's.
import asyncio
import gc
import sys


def rss_kb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


async def main(port, ca_path):
    gc.collect()
    heap0, rss0 = gc.mem_free(), rss_kb()
    import tls

    context = tls.SSLContext(tls.PROTOCOL_TLS_CLIENT)
    with open(ca_path, "rb") as f:
        context.load_verify_locations(f.read())
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname="127.0.0.1")
    writer.write(b"\x10\x0e\x00\x04MQTT\x04\x02\x00\x1e\x00\x02tl")  # CONNECT, clean session, id "tl"
    await writer.drain()
    connack = await reader.read(4)
    gc.collect()
    heap1, rss1 = gc.mem_free(), rss_kb()
    writer.close()
    print('{"connack": %d, "heap_bytes": %d, "rss_kb": %d}' % (connack[0], heap0 - heap1, rss1 - rss0))


asyncio.run(main(int(sys.argv[1]), sys.argv[2]))
