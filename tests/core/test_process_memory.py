"""medic.core.process_memory: memory a finished run's thread freed goes back to the OS, threads share two arenas.

Each case runs in a fresh interpreter: the test process's own heap (pytest, Prefect, earlier tests)
would blur what is measured.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from medic.core.process_memory import _glibc

pytestmark = pytest.mark.skipif(_glibc() is None, reason="the C library is not glibc: both calls are no-ops")

_FRAGMENT = """
import json, threading
from medic.core.process_memory import release_free_memory

def rss_mb():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20

kept = []
base = rss_mb()
def run():
    # what a finished run leaves: 30 MB of 8 KB buffers freed, one in 100 still alive (the top of the
    # arena stays in use, so glibc's automatic trim at free() cannot give the space back)
    chunks = [bytes(8192) for _ in range(3840)]
    kept.extend(chunk for i, chunk in enumerate(chunks) if i % 100 == 99)
    del chunks

threads = [threading.Thread(target=run) for _ in range(4)]
for t in threads: t.start()
for t in threads: t.join()
before = rss_mb()
released = RELEASE
after = rss_mb()
print(json.dumps({"base": base, "before": before, "after": after, "released": released, "kept": len(kept)}))
"""


def _measure(release: str) -> dict[str, float]:
    code = textwrap.dedent(_FRAGMENT).replace("RELEASE", release)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    return json.loads(out.stdout)


def test_release_gives_back_what_finished_threads_freed() -> None:
    trimmed = _measure("release_free_memory()")
    untouched = _measure("False")
    assert trimmed["released"] is True, trimmed
    assert trimmed["kept"] == untouched["kept"] == 4 * 38
    # 4 threads freed ~119 MB in their own arenas: without a trim the process keeps holding most of it,
    # with one it is back near where it started (the 152 kept buffers are 1.2 MB)
    assert untouched["after"] - untouched["base"] > 60, f"freed memory went back by itself: {untouched}"
    assert trimmed["before"] - trimmed["base"] > 60, f"the threads did not allocate as expected: {trimmed}"
    assert trimmed["after"] - trimmed["base"] < 20, f"trim gave back too little: {trimmed}"


_ARENAS = """
import ctypes, os, tempfile, threading
from medic.core.process_memory import _glibc, limit_malloc_arenas

if CAP:
    assert limit_malloc_arenas(2) is not bool(os.environ.get("MALLOC_ARENA_MAX"))
barrier = threading.Barrier(8)
def run():
    buffers = [bytes(4096) for _ in range(64)]  # every thread allocates while all 8 are alive
    barrier.wait()
    del buffers

threads = [threading.Thread(target=run) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
libc = _glibc()
libc.fopen.restype = ctypes.c_void_p
libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
libc.fclose.argtypes = [ctypes.c_void_p]
path = tempfile.mktemp()
stream = libc.fopen(path.encode(), b"w")
libc.malloc_info(0, stream)
libc.fclose(stream)
print(open(path).read().count("<heap nr="))
os.unlink(path)
"""


def _arenas(cap: bool, env: dict[str, str] | None = None) -> int:
    code = textwrap.dedent(_ARENAS).replace("CAP", str(cap))
    full_env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"} | (env or {})
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True,
                         env=full_env)
    return int(out.stdout.strip())


def test_run_threads_share_two_arenas_once_capped() -> None:
    assert _arenas(cap=True) <= 2
    # the control: uncapped, glibc gives each new thread its own arena (up to 8 per core)
    assert _arenas(cap=False) > 2, "8 threads got no more than 2 arenas without a cap: the capped case proves nothing"


def test_an_operators_malloc_arena_max_wins() -> None:
    """MALLOC_ARENA_MAX set by whoever starts medic is glibc's to apply; medic's call then changes nothing."""
    assert _arenas(cap=True, env={"MALLOC_ARENA_MAX": "4"}) == 4
