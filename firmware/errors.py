# A small ring of the last errors on flash (errors.log), so a technician can read what went wrong even
# after a restart. Never holds personal data: only codes and exception texts.
import sys
import time

KEEP = 20


def log(flash, text):
    path = flash + "/errors.log"
    try:
        with open(path) as f:
            lines = f.read().split("\n")[-KEEP:]
    except OSError:
        lines = []
    lines = [line for line in lines if line] + ["%d %s" % (time.ticks_ms(), text.replace("\n", " ")[:200])]
    with open(path, "w") as f:
        f.write("\n".join(lines[-KEEP:]) + "\n")
    print("error:", text)


def exception_text(e):
    import io

    buffer = io.StringIO()
    # The stubs miss that MicroPython's StringIO is a stream with getvalue(); it is.
    sys.print_exception(e, buffer)  # pyright: ignore[reportArgumentType]
    return buffer.getvalue()  # pyright: ignore[reportAttributeAccessIssue]
