"""Start and stop the servers bench/compare.py measures, each as its own process:
`herald serve` (a black box: environment variables in, gRPC and /metrics out) and the
echo ceilings of bench/echo_server.py."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from common import ROOT, child_env, free_port, wait_port

HERALD = [sys.executable, "-m", "gateway.cli.main", "serve"]


@dataclass(frozen=True)
class Server:
    address: str  # host:port of its gRPC API
    pid: int  # the process whose tree's CPU is the server's
    metrics_url: str  # Herald's admin /metrics; empty for an echo


def herald_has_processes_flag() -> bool:
    """Whether `herald serve --help` lists --processes (a flag still to come)."""
    found = subprocess.run([*HERALD, "--help"], cwd=ROOT, env=child_env(), capture_output=True, text=True, check=False)
    return "--processes" in found.stdout


def bench_policies(folder: Path) -> Path:
    """The sample policies with every business unit's request rate limit lifted."""
    shutil.copytree(ROOT / "policies", folder)
    units = folder / "business_units.yaml"
    units.write_text(re.sub(r"rate_limit: \{requests: \d+", "rate_limit: {requests: 100000000", units.read_text()))
    return folder


@contextmanager
def _process(command: list[str], env: dict[str, str], log: Path, ports: list[int]) -> Iterator[int]:
    with log.open("wb") as out:
        proc = subprocess.Popen(command, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:
        try:
            for port in ports:
                wait_port(port, within=60, proc=proc)
        except RuntimeError as exc:
            tail = log.read_text(errors="replace").strip().splitlines()[-3:]
            raise RuntimeError(f"{exc}; the end of {log.name}: {' | '.join(tail) or '(empty)'}") from None
        yield proc.pid
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextmanager
def echo_server(workdir: Path, redis_url: str) -> Iterator[Server]:
    port = free_port()
    command = [sys.executable, str(ROOT / "bench" / "echo_server.py"), "--listen", f"127.0.0.1:{port}"]
    if redis_url:
        command += ["--redis-url", redis_url]
    with _process(command, child_env(), workdir / "echo.log", [port]) as pid:
        yield Server(f"127.0.0.1:{port}", pid, "")


@contextmanager
def herald_server(
    workdir: Path,
    redis_url: str,
    deliver: bool,
    processes: int | None,
    log_level: str,
    cluster: bool = False,
    policies: Path | None = None,
    extra_env: Mapping[str, str] | None = None,
) -> Iterator[Server]:
    """`herald serve` on the sample policies (rate limits lifted), its log in workdir.
    `processes`: passed as --processes when not None. `cluster`: `redis_url` is one node
    of a Redis Cluster. `policies`: a policy folder of the caller's instead. `extra_env`:
    more HERALD_* settings."""
    port, admin = free_port(), free_port()
    env = child_env(
        HERALD_LISTEN=f"127.0.0.1:{port}",
        HERALD_ADMIN_LISTEN=f"127.0.0.1:{admin}",
        HERALD_POLICY_DIR=str(policies or bench_policies(workdir / "policies")),
        HERALD_DATA_DIR=str(workdir / "var"),
        HERALD_REDIS_URL=redis_url,
        HERALD_REDIS_CLUSTER="true" if cluster else "false",
        HERALD_DELIVER="true" if deliver else "false",
        HERALD_LOG_LEVEL=log_level,
        **(extra_env or {}),
    )
    command = [*HERALD, "--processes", str(processes)] if processes is not None else HERALD
    with _process(command, env, workdir / "herald.log", [port, admin]) as pid:
        yield Server(f"127.0.0.1:{port}", pid, f"http://127.0.0.1:{admin}/metrics")
