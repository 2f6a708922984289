"""bench/compare.py still runs end to end: a smoke test on a tiny workload, not a speed check."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(90)
def test_compare_runs_and_prints_a_line_per_target() -> None:
    command = [
        sys.executable,
        str(ROOT / "bench" / "compare.py"),
        "--targets", "echo,herald-memory",
        "--requests", "200",
        "--warmup", "50",
        "--users", "500",
        "--rate", "50",
        "--duration", "1",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=80, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "$ " in out.splitlines()[0] and "compare.py" in out.splitlines()[0]
    assert re.search(r"^machine: \d+ cores", out, re.M)
    # The closed-loop table: a figure for each target, the ceiling's ratio for Herald.
    assert re.search(r"^echo +[\d,]+ calls/s", out, re.M), out
    assert re.search(r"^herald-memory +[\d,]+ calls/s .* echo +\d+% ", out, re.M), out
    # The fixed-rate block: a line per unary target, 50 calls/s offered.
    block = out[out.index("Fixed rate:") :]
    for target in ("echo", "herald-memory"):
        assert re.search(rf"^{target} +50 +[\d,]+ ", block, re.M), block
