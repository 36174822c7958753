"""`python bench/serve_census.py OUT.jsonl serve ARGS…`: medic serve as shipped, plus a census of its memory.

The soak measures medic serve's RSS from /proc; RSS alone cannot tell objects that pile up from memory
the allocators keep. Every `MEDIC_CENSUS_EVERY_S` seconds (60) this writes one JSON line: RSS, Python's
allocated blocks, glibc's malloc in use / free / mmapped (`mallinfo2`), live objects per type (the 40
most numerous, after a collection), threads and imported modules. Compare the first line after warm-up
with the last: a type whose count grows with the runs is a leak; RSS growing while blocks and
malloc-in-use stay flat is the allocator keeping freed memory.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import runpy
import sys
import threading
import time
from collections import Counter
from pathlib import Path


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def _malloc_totals() -> dict[str, int]:
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _Mallinfo2
    except (OSError, AttributeError):
        return {}
    info = libc.mallinfo2()
    return {"malloc_in_use": info.uordblks, "malloc_free": info.fordblks, "malloc_mmapped": info.hblkhd,
            "malloc_arena_bytes": info.arena}


def _rss_kb() -> int:
    status = Path("/proc/self/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))


def census() -> dict[str, object]:
    gc.collect()
    by_type = Counter(map(type, gc.get_objects()))  # names only for the top 40: no 200k-string peak of its own
    types = Counter({f"{t.__module__}.{t.__qualname__}": n for t, n in by_type.most_common(40)})
    return {"at": time.time(), "rss_kb": _rss_kb(), "blocks": sys.getallocatedblocks(), **_malloc_totals(),
            "threads": threading.active_count(), "modules": len(sys.modules), "objects": sum(by_type.values()),
            "types": dict(types.most_common(40))}


def _write_every(out: Path, every: float) -> None:
    while True:
        with out.open("a") as f:
            f.write(json.dumps(census()) + "\n")
        time.sleep(every)


def main() -> None:
    out, argv = Path(sys.argv[1]), sys.argv[2:]
    every = float(os.environ.get("MEDIC_CENSUS_EVERY_S", "60"))
    threading.Thread(target=_write_every, args=(out, every), daemon=True, name="census").start()
    sys.argv = ["medic", *argv]
    runpy.run_module("medic", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
