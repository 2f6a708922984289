"""Test helpers: free ports, a real redis-server, waiting for things."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

ROOT_DIR = Path(__file__).resolve().parent.parent
HERALD = (sys.executable, "-m", "gateway.cli.main")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


@contextmanager
def redis_server() -> Iterator[str]:
    """A real redis-server on a free port, with no persistence; yields its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError(
            "redis-server is not installed; run the README's test command "
            "(scripts/test), which installs it, or apt-get install redis-server"
        )
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="herald-redis-")
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            workdir,
            "--daemonize",
            "no",
            "--loglevel",
            "warning",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(workdir, ignore_errors=True)


@contextmanager
def herald_serve(
    env: dict[str, str],
    log: Path,
    *,
    cwd: Path = ROOT_DIR,
    command: Sequence[str] = HERALD,
    stop: int = signal.SIGTERM,
) -> Iterator[subprocess.Popen[bytes]]:
    """`herald serve` as its own process, stderr to ``log``, yielded once it listens on
    the gRPC port of ``env["HERALD_LISTEN"]``; stopped with ``stop`` on exit (SIGKILL
    when it has not stopped 30 s later)."""
    port = int(env["HERALD_LISTEN"].rsplit(":", 1)[1])
    with log.open("wb") as out:
        proc = subprocess.Popen([*command, "serve"], env=env, cwd=cwd, stderr=out)
    try:
        wait_for_port(port, timeout=30)
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(stop)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


class RedisProcess:
    """A redis-server the test can stop, restart on the same port and data, freeze and
    thaw. With ``aof`` every write is fsynced to the append-only file before Redis
    answers, so a restart keeps everything that was acknowledged."""

    def __init__(self, aof: bool = True) -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="herald-redis-")
        self.aof = aof
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed; run scripts/test, which installs it")
        persistence = ["--appendonly", "yes", "--appendfsync", "always"] if self.aof else ["--appendonly", "no"]
        where = ["--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir]
        self.proc = subprocess.Popen(
            [binary, *where, "--save", "", *persistence, "--daemonize", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port)

    def stop(self, sig: int = 15) -> None:
        if self.proc is not None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=10)
            self.proc = None

    def freeze(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(19)  # SIGSTOP: up, but answers nothing

    def thaw(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(18)  # SIGCONT

    def close(self) -> None:
        if self.proc is not None:
            self.thaw()
            self.stop(9)
        shutil.rmtree(self.dir, ignore_errors=True)


@asynccontextmanager
async def herald(
    command: str, env: dict[str, str], log: Path, *, nice: int = 0
) -> AsyncIterator[asyncio.subprocess.Process]:
    """`herald <command>` as its own process, stderr to ``log``; stopped on exit.
    ``nice``: run it under `nice -n <nice>` (0: as this process)."""
    niced = ["nice", "-n", str(nice)] if nice else []
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            *niced, sys.executable, "-m", "gateway.cli.main", command, env=env, cwd=ROOT_DIR, stderr=out
        )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.terminate()
            await asyncio.wait_for(proc.wait(), 20)


async def wait_until(check: object, within: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not await check():  # type: ignore[operator]
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def herald_env(redis_url: str, policies: Path, data_dir: Path, **settings: str) -> dict[str, str]:
    """The environment of a `herald serve` or `herald worker` a test starts: this
    process's, the store and the policies, gRPC on a free port, the admin port anywhere,
    warnings only, a stalled delivery taken over and a stop finished within 2 s; then
    ``settings`` (HERALD_* variables: providers' credentials, the test's own)."""
    return {
        **os.environ,
        "HERALD_REDIS_URL": redis_url,
        "HERALD_POLICY_DIR": str(policies),
        "HERALD_LISTEN": f"127.0.0.1:{free_port()}",
        "HERALD_ADMIN_LISTEN": "127.0.0.1:0",
        "HERALD_DATA_DIR": str(data_dir),
        "HERALD_LOG_LEVEL": "WARNING",
        "HERALD_RECLAIM_SECONDS": "2",
        "HERALD_GRACE_SECONDS": "2",
        **settings,
    }
