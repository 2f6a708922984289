"""Metrics of several processes: each writes its own file, found again after a fork.

gateway.metrics keeps the process id prometheus_client checks at every increment
instead of asking the system each time; a forked child must still get a file of its
own, or the parent's and the child's counts would overwrite each other."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import os
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from gateway.metrics import Metrics, _process_id

metrics = Metrics(CollectorRegistry())
metrics.sends.labels("WECHAT_TEMPLATE", "wechat", "delivered").inc(2)
parent = os.getpid()
child = os.fork()
if child == 0:
    assert _process_id() == os.getpid() != parent
    metrics.sends.labels("WECHAT_TEMPLATE", "wechat", "delivered").inc(3)
    os._exit(0)
os.waitpid(child, 0)
metrics.sends.labels("WECHAT_TEMPLATE", "wechat", "delivered").inc(5)
combined = CollectorRegistry()
MultiProcessCollector(combined)
total = combined.get_sample_value(
    "herald_sends_total", {"channel": "WECHAT_TEMPLATE", "provider": "wechat", "result": "delivered"}
)
files = sorted(os.listdir(os.environ["PROMETHEUS_MULTIPROC_DIR"]))
print(total, len([f for f in files if f.startswith("counter_")]))
"""


def test_a_forked_child_counts_in_its_own_file(tmp_path: Path) -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    total, files = done.stdout.split()
    # 2 + 5 in the parent's file, 3 in the child's: none overwritten.
    assert float(total) == 10.0
    assert int(files) == 2
