"""500 mutated samples through every subcommand: no traceback, no hang, no partial file (issue 8)."""
import resource
import subprocess
import sys
from pathlib import Path

import pytest

DRIVER = Path(__file__).resolve().parent / "fuzz_cases.py"


def _limit_memory():
    resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))   # a runaway allocation fails, not the machine


def test_fuzz_500_cases():
    r = subprocess.run([sys.executable, str(DRIVER), "--seed", "0", "--cases", "500"], capture_output=True,
                       text=True, timeout=600, preexec_fn=_limit_memory)
    print(r.stdout)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    assert "tracebacks, hangs or partial files: 0" in r.stdout


@pytest.mark.training
def test_fuzz_training_commands():
    """nio and compare (training build) on 60 mutated samples: the same bar."""
    r = subprocess.run([sys.executable, str(DRIVER), "--seed", "1", "--cases", "60", "--training"],
                       capture_output=True, text=True, timeout=600, preexec_fn=_limit_memory)
    print(r.stdout)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    assert "tracebacks, hangs or partial files: 0" in r.stdout
