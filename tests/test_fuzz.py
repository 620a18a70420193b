"""500 mutated samples through every subcommand: no traceback, no hang, no partial file (issue 8)."""
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest

DRIVER = Path(__file__).resolve().parent / "fuzz_cases.py"


def _limit_memory():
    resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))   # a runaway allocation fails, not the machine


def test_fuzz_500_cases():
    start = time.perf_counter()
    r = subprocess.run([sys.executable, str(DRIVER), "--seed", "0", "--cases", "500"], capture_output=True,
                       text=True, timeout=600, preexec_fn=_limit_memory)
    print(r.stdout)
    assert time.perf_counter() - start < 300, "the issue's budget for the fuzz run is 5 minutes"
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    assert "tracebacks, hangs, partial files or invalid outputs: 0" in r.stdout


@pytest.mark.training
def test_fuzz_training_commands():
    """nio and compare (training build) on 60 mutated samples: the same bar."""
    r = subprocess.run([sys.executable, str(DRIVER), "--seed", "1", "--cases", "60", "--training"],
                       capture_output=True, text=True, timeout=600, preexec_fn=_limit_memory)
    print(r.stdout)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    assert "tracebacks, hangs, partial files or invalid outputs: 0" in r.stdout
