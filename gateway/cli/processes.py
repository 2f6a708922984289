"""``herald serve --processes N``: one gateway process per core on the same ports.

Python runs one core per process, so a host with N cores runs N gateway processes.
This parent starts them (each a plain ``herald serve`` with the same settings), and
does nothing else: the kernel spreads new connections over them (SO_REUSEPORT on the
gRPC and admin ports), the shared state in Redis makes them one gateway, and
``/metrics`` on any of them shows the figures of all (``gateway.metrics.exposition``).

Each child keeps its own data folder, ``<data dir>/process-<i>`` (its fail-open spool,
its sandbox outbox), and is started again with the same index when it dies, so a spool
a killed process left is drained by its successor. SIGTERM and SIGINT stop them all
(each with its grace period); SIGHUP is passed on (policy reload). Should this parent
die without stopping them (SIGKILL), the kernel sends each child SIGTERM
(PR_SET_PDEATHSIG): no gateway outlives its supervisor unseen.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from prometheus_client import multiprocess

from gateway.config import Settings
from gateway.logs import get_logger

log = get_logger(__name__)
# The environment variable that tells a child its place ("<index>/<count>").
CHILD = "HERALD_PROCESS_OF"
# A child that dies is started again after a second; one that dies sooner than
# HEALTHY_AFTER after its start waits twice as long as the last time (up to
# MAX_BACKOFF). One that says it cannot start (exit code 2: a setting, the policy, a
# port) stops them all, since its siblings would fail the same way.
HEALTHY_AFTER = 10.0
MAX_BACKOFF = 30.0
CANNOT_START = 2


def problem(settings: Settings) -> str | None:
    """Why these settings cannot run several processes, or None."""
    if settings.processes < 1:
        return f"--processes must be 1 or more, not {settings.processes}"
    if settings.processes == 1:
        return None
    if not settings.redis_url:
        return (
            f"--processes {settings.processes} needs the shared state of Redis: set --redis-url or "
            "HERALD_REDIS_URL (in-memory state lives in one process)"
        )
    for name in ("listen", "admin_listen", "public_listen"):
        address = getattr(settings, name)
        if address and address.rpartition(":")[2] in ("0", ""):
            return f"--processes needs fixed ports: --{name.replace('_', '-')} is {address!r}"
    return None


_PR_SET_PDEATHSIG = 1


def _die_with(parent: int) -> None:
    """In the child before exec: SIGTERM when the parent dies (and if it already has)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)


@dataclass
class _Child:
    index: int
    proc: subprocess.Popen[bytes]
    started: float = field(default_factory=time.monotonic)


class Supervisor:
    def __init__(self, settings: Settings, argv: list[str]) -> None:
        self._settings = settings
        self._argv = argv
        self._metrics_dir = Path(tempfile.mkdtemp(prefix="herald-metrics-"))
        self._children: dict[int, _Child] = {}
        self._stopping = False
        self._reload = False
        self._backoff = dict.fromkeys(range(settings.processes), 0.0)
        self._restart_at: dict[int, float] = {}

    def _start(self, index: int) -> None:
        env = {
            **os.environ,
            CHILD: f"{index}/{self._settings.processes}",
            "PROMETHEUS_MULTIPROC_DIR": str(self._metrics_dir),
        }
        parent = os.getpid()
        proc = subprocess.Popen(self._argv, env=env, preexec_fn=lambda: _die_with(parent))
        self._children[index] = _Child(index, proc)
        log.info("process_started", process=index, pid=proc.pid)

    def _on_signal(self, signum: int, _: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            self._reload = True
        else:
            self._stopping = True

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        log.info("processes_starting", processes=self._settings.processes, listen=self._settings.listen)
        try:
            for index in range(self._settings.processes):
                self._start(index)
            code = self._watch()
        finally:
            self._stop_all()
            shutil.rmtree(self._metrics_dir, ignore_errors=True)
        return code

    def _watch(self) -> int:
        while not self._stopping:
            if self._reload:
                self._reload = False
                for child in self._children.values():
                    child.proc.send_signal(signal.SIGHUP)
            for index, child in list(self._children.items()):
                code = child.proc.poll()
                if code is None:
                    continue
                del self._children[index]
                multiprocess.mark_process_dead(child.proc.pid, str(self._metrics_dir))  # type: ignore[no-untyped-call]
                if code == CANNOT_START:
                    # A setting or the policy is wrong: every sibling would fail the same way.
                    log.error("process_cannot_start", process=index, exit_code=code, detail="stopping all")
                    return code
                lived = time.monotonic() - child.started
                backoff = 1.0 if lived >= HEALTHY_AFTER else min(MAX_BACKOFF, 2 * self._backoff[index] or 1.0)
                self._backoff[index] = backoff
                self._restart_at[index] = time.monotonic() + backoff
                log.error("process_exited", process=index, exit_code=code, restart_in_seconds=backoff)
            for index, at in list(self._restart_at.items()):
                if time.monotonic() >= at:
                    del self._restart_at[index]
                    self._start(index)
            time.sleep(0.1)
        return 0

    def _stop_all(self) -> None:
        for child in self._children.values():
            if child.proc.poll() is None:
                child.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self._settings.grace_seconds + 10
        for child in self._children.values():
            try:
                child.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("process_killed", process=child.index, detail="did not stop within its grace period")
                child.proc.kill()
                child.proc.wait()
        log.info("processes_stopped")


def supervise(settings: Settings, argv: list[str]) -> int:
    return Supervisor(settings, argv).run()


def child_index() -> tuple[int, int] | None:
    """(index, count) when this process is a child of ``serve --processes``."""
    raw = os.environ.get(CHILD, "")
    index, _, count = raw.partition("/")
    if not raw or not index.isdigit() or not count.isdigit():
        return None
    return int(index), int(count)
