"""The tuned glibc malloc (eseg_cli.inference.allocator): freed memory stays in the heap for the next step."""

import os
import platform
import subprocess
import sys

import pytest

from eseg_cli.inference import allocator

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                                reason="mallopt is glibc's (Linux)")

# In a fresh process: malloc, touch and free 20 MB (the size of ESeg-Lite-S's full-size logits at 4 x 256x256),
# then print the free bytes glibc keeps in its heap (mallinfo2's fordblks).
PROBE = """
import ctypes
from eseg_cli.inference.allocator import keep_freed_memory
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Info
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, (ctypes.c_size_t,), (ctypes.c_void_p,)
tuned = keep_freed_memory()
p = libc.malloc(20 << 20)
ctypes.memset(p, 1, 20 << 20)
libc.free(p)
print(tuned, libc.mallinfo2().fordblks)
"""


def probe(malloc: str) -> tuple[bool, int]:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True,
                         env={**os.environ, allocator.ENV: malloc})
    tuned, free = out.stdout.split()
    return tuned == "True", int(free)


def test_tuned_malloc_keeps_a_freed_step_sized_block_in_the_heap():
    tuned, free = probe("tuned")
    assert tuned
    assert free >= 20 << 20  # the 20 MB came from the heap and went back to it, not to the kernel


def test_eseg_malloc_default_leaves_glibc_alone():
    tuned, free = probe("default")
    assert not tuned
    assert free < 20 << 20  # glibc's defaults: the block was mmapped and unmapped



def test_predictor_on_cpu_tunes_malloc(monkeypatch):
    from eseg_cli.inference import Predictor, predictor
    from eseg_cli.models import build_model

    calls = []
    monkeypatch.setattr(predictor, "keep_freed_memory", lambda: calls.append(True) or True)
    Predictor(build_model("lite-s", 3, width=0.25, depth=0.3, channels=16, repeats=1, max_level=5), device="cpu")
    assert calls == [True]


@pytest.mark.parametrize("value", ["tunde", "off", "jemalloc"])
def test_an_unknown_eseg_malloc_value_is_refused_with_the_variable_named(monkeypatch, value):
    from eseg_cli.errors import EsegError

    monkeypatch.setenv(allocator.ENV, value)
    with pytest.raises(EsegError, match=f"ESEG_MALLOC={value!r}.*tuned.*default"):
        allocator.keep_freed_memory()


@pytest.mark.parametrize("value", ["", " Tuned ", "DEFAULT"])
def test_eseg_malloc_takes_its_values_in_any_case_and_empty_as_tuned(monkeypatch, value):
    monkeypatch.setenv(allocator.ENV, value)
    assert allocator.requested() == (value.strip().lower() or "tuned")


def test_eseg_train_with_a_misspelt_eseg_malloc_exits_2_naming_it(tmp_path):
    env = {**os.environ, allocator.ENV: "tunde"}
    out = subprocess.run([sys.executable, "-m", "eseg_cli", "train", "--scale", "lite-s", "--steps", "1",
                          "--run-dir", str(tmp_path / "run"), "--yes"], capture_output=True, text=True, env=env)
    assert out.returncode == 2, out.stderr
    assert "ESEG_MALLOC='tunde'" in out.stderr + out.stdout and "Traceback" not in out.stderr
