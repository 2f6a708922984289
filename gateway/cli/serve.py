"""``herald serve``: run the gateway until SIGTERM/SIGINT; SIGHUP reloads policy."""

from __future__ import annotations

import asyncio
import gc
import signal
import sys

from gateway.admin_token import TokenFileError, local_token
from gateway.app import Gateway
from gateway.cli import processes
from gateway.config import Settings
from gateway.errors import HeraldError, PolicyError
from gateway.logs import bind_process, configure, get_logger

log = get_logger(__name__)


def _install_loop() -> str:
    try:
        import uvloop
    except ImportError:
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"


# The cyclic garbage collector's first generation runs every this many new container
# objects (CPython's default, 700, makes a busy gateway spend a third of its time in
# collections that find nothing: Herald's values are frozen msgspec structs outside the
# collector, and what it keeps is freed by reference counting).
GC_FIRST_GENERATION = 50_000


def _tune_gc() -> None:
    """What a long-running server wants from the collector: what start-up built (modules,
    the policy, the servers) set aside for good, and collections far less often."""
    gc.freeze()
    gc.set_threshold(GC_FIRST_GENERATION, 20, 100)


async def _serve(settings: Settings, api: bool) -> int:
    gateway = Gateway(settings, api=api)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, gateway.reload)
    await gateway.start()
    _tune_gc()
    await stop.wait()
    log.info("stopping", grace_seconds=settings.grace_seconds)
    await gateway.stop()
    return 0


def run(settings: Settings, api: bool = True, argv: list[str] | None = None) -> int:
    """Run the gateway (or a worker, ``api`` False) in this process, or with
    ``settings.processes`` over 1, that many children of this one running ``argv``."""
    configure(settings.log_level, json=settings.log_format == "json")
    if not settings.admin_token.get_secret_value():
        # The local run: a token made once in the data folder (before a child's own
        # folder is chosen: every process of `--processes N` takes the same one).
        try:
            token, path, made = local_token(settings.data_dir)
        except (OSError, UnicodeDecodeError, TokenFileError) as exc:
            print(f"herald: cannot start: the local admin token: {exc}", file=sys.stderr)
            return 2
        settings = settings.replace(admin_token=token)
        if processes.child_index() is None:  # said once, by the process the person started
            log.info(
                "admin_token_file",
                path=str(path),
                made=made,
                detail="no HERALD_ADMIN_TOKEN: the admin API (kill switches) takes the token kept in this file "
                "(mode 0600); `herald kill` on this machine reads it",
            )
    place = processes.child_index()
    if place is not None:  # one of the processes of `serve --processes N` (the same flags)
        data_dir = settings.data_dir / f"process-{place[0]}"  # its own spool and outbox
        settings = settings.replace(processes=1, reuse_port=True, data_dir=data_dir)
        bind_process(process=place[0])
    why = processes.problem(settings)
    if why is not None:
        print(f"herald: {why}", file=sys.stderr)
        return 2
    if settings.processes > 1:
        return processes.supervise(settings, argv or [sys.executable, "-m", "gateway.cli.main", *sys.argv[1:]])
    loop_kind = _install_loop()
    log.info(
        "starting",
        role="gateway" if api else "worker",
        loop=loop_kind,
        store=settings.store_kind,
        policy_dir=str(settings.policy_dir),
    )
    try:
        return asyncio.run(_serve(settings, api))
    except PolicyError as exc:
        print(f"herald: cannot start: {exc}", file=sys.stderr)
        return 2
    except HeraldError as exc:
        print(f"herald: cannot start: {exc.message}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"herald: cannot start: {exc}", file=sys.stderr)
        return 2
