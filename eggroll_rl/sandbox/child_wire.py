"""Child side: the pipes between the sandbox's processes, and what may cross them.

Runs inside the sandbox (see ``child.py``): stdlib only, and siblings are imported only as
``from .module import name``.
"""

import marshal
import os

# The plain data that may cross from the candidate to the tests, by exact type.
PLAIN_SCALARS = (type(None), bool, int, float, complex, str, bytes)
PLAIN_TYPES = (*PLAIN_SCALARS, list, tuple, dict, set, frozenset)


def read_all(fd):
    chunks = []
    while True:
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks)


def write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def send(fd, obj):
    data = marshal.dumps(obj)
    write_all(fd, len(data).to_bytes(4, "little") + data)


def recv(fd, limit=64 << 20):
    """One framed message; EOFError when the other side is gone."""

    def exact(n):
        buf = bytearray()
        while len(buf) < n:
            chunk = os.read(fd, min(n - len(buf), 1 << 20))
            if not chunk:
                raise EOFError("peer closed")
            buf += chunk
        return bytes(buf)

    size = int.from_bytes(exact(4), "little")
    if size > limit:
        raise ValueError("message too large")
    return marshal.loads(exact(size))


def plain(value, max_items=10_000_000):
    """True if `value` is plain data, by exact type, all the way down (iteratively)."""
    stack, seen = [value], 0
    while stack:
        v = stack.pop()
        seen += 1
        if seen > max_items:
            return False
        t = type(v)
        if t in PLAIN_SCALARS:
            continue
        if t is list or t is tuple or t is set or t is frozenset:
            stack.extend(v)
        elif t is dict:
            stack.extend(v.keys())
            stack.extend(v.values())
        else:
            return False
    return True
