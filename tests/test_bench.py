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


@pytest.mark.cluster
@pytest.mark.timeout(150)
def test_compare_runs_the_cluster_targets_and_prints_each_masters_share() -> None:
    """compare.py starts its own Redis Cluster (a few seconds) and reads each master."""
    targets = ("herald-cluster-api", "herald-cluster", "herald-cluster-api-batch")
    command = [
        sys.executable,
        str(ROOT / "bench" / "compare.py"),
        "--targets", ",".join(targets),
        "--requests", "100",
        "--warmup", "20",
        "--users", "200",
        "--batch", "50",
        "--rate", "20",
        "--duration", "0.5",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=140, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    # Each cluster target in the closed-loop and Redis tables, read against its single-node twin's ceiling.
    for target, ceiling in zip(targets, ("echo-redis", "echo-redis", "echo-redis-batch"), strict=True):
        assert re.search(rf"^{target}( \(\d proc\))? +[\d,]+ (calls|decisions)/s .* {ceiling} ", out, re.M), out
    redis = out[out.index("Redis, per decision") : out.index("Redis Cluster, per master")]
    for target in targets:
        assert re.search(rf"^{target}( \(\d proc\))? +100 ", redis, re.M), redis
    # The per-master section: a line per cluster target naming three masters, no more.
    section = out[out.index("Redis Cluster, per master") : out.index("Fixed rate:")]
    share = r"master {}: \d+% of commands, [\d,]+ µs/decision"
    for target in targets:
        line = re.search(rf"^{target}( \(\d proc\))? +(.*)$", section, re.M)
        assert line, section
        assert re.search("; ".join(share.format(i) for i in (1, 2, 3)) + "; replicas: ", line[2]), line[0]
        assert "master 4" not in line[2]
    # The fixed-rate phase runs on the unary cluster targets only.
    block = out[out.index("Fixed rate:") :]
    assert re.search(r"^herald-cluster-api( \(\d proc\))? +20 ", block, re.M), block
    assert re.search(r"^herald-cluster( \(\d proc\))? +20 ", block, re.M), block
    assert "herald-cluster-api-batch" not in block
