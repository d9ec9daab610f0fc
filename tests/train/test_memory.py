"""glibc allocator settings for training (``bnlab.train.memory``): freed activation-sized
buffers are reused instead of page-faulted in again every step."""

from __future__ import annotations

import subprocess
import sys

import pytest

_FAULTS = """
import resource, sys, torch
from bnlab.train import memory
tuned = memory.keep_freed_memory() if sys.argv[1] == "tuned" else False
def step():  # a 48 MB buffer, above glibc's largest dynamic mmap threshold (32 MB)
    return float(torch.ones(12 << 20)[0])
for _ in range(3):
    step()  # glibc's dynamic thresholds settle
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(40):
    step()
print(tuned, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> tuple[bool, int]:
    out = subprocess.run(
        [sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True, check=True
    ).stdout.split()
    return out[0] == "True", int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_tuned_allocator_stops_page_faults_on_reused_buffers() -> None:
    tuned, faults_tuned = _faults("tuned")
    _, faults_default = _faults("default")
    assert tuned
    # 40 steps touch 40 x 48 MB = 491,520 fresh pages by default; kept in the heap, at
    # most the first buffer or two (the heap growing) fault.
    assert faults_default > 400_000, faults_default
    assert faults_tuned < faults_default / 10, (faults_tuned, faults_default)
