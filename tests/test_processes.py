"""`herald serve --processes N`: one gateway process per core on the same ports.

Real processes on a real Redis and the fake WeChat: the kernel spreads connections
over the children, each delivers from the shared queue, /metrics on the shared admin
port adds up every child's figures, a child killed with SIGKILL is started again
(and nothing it accepted is lost), and SIGTERM stops them all.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import grpc
import pytest

from herald.v1 import profile_pb2, profile_pb2_grpc, push_pb2, push_pb2_grpc, types_pb2
from tests.conftest import ROOT
from tests.e2e.channels_setup import fakes, policies_for
from tests.e2e.conftest import auth
from tests.helpers import free_port, wait_until


def events(log: Path, name: str) -> list[dict[str, object]]:
    out = []
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            event = json.loads(line)
            if event.get("event") == name:
                out.append(event)
    return out


def started_pids(log: Path) -> list[int]:
    return [int(str(e["pid"])) for e in events(log, "process_started")]


def running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's exit may wait for a reaper)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "zombie" not in status


def shipped(i: int) -> push_pb2.PushRequest:
    return push_pb2.PushRequest(
        request_id=f"r-{i}",
        user_id=f"u-{i % 50}",
        scenario="order.shipped",
        params={"order_id": f"O-{i}", "carrier": "SF", "tracking_no": f"T{i}"},
        dedup_key=f"O-{i}",
    )


async def decisions_on_metrics(admin: str) -> float:
    async with aiohttp.ClientSession() as http, http.get(f"http://{admin}/metrics") as page:
        text = await page.text()
    # The multiprocess collector's view: no _created series there either.
    assert "_created" not in text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith('herald_decisions_total{bu="order",category="basic",outcome="ACCEPTED"')
    )


@pytest.mark.timeout(180)
async def test_processes_share_ports_state_and_metrics_and_replace_the_dead(clean_redis: str, tmp_path: Path) -> None:
    async with fakes() as fake:
        listen, admin = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
        env = {
            **os.environ,
            **fake.environ(),
            "HERALD_REDIS_URL": clean_redis,
            "HERALD_POLICY_DIR": str(policies_for(tmp_path, fake)),
            "HERALD_LISTEN": listen,
            "HERALD_ADMIN_LISTEN": admin,
            "HERALD_DATA_DIR": str(tmp_path / "var"),
            "HERALD_LOG_LEVEL": "INFO",
            "HERALD_PROCESSES": "2",
            # The killed process's deliveries in flight are taken over after this (the
            # default, 60 s, is longer than the test waits for them).
            "HERALD_RECLAIM_SECONDS": "3",
        }
        log = tmp_path / "serve.log"
        with log.open("wb") as out:
            parent = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "gateway.cli.main", "serve", env=env, cwd=ROOT, stderr=out
            )
        try:

            async def both_started() -> bool:
                return {e.get("process") for e in events(log, "starting")} == {0, 1}

            await wait_until(both_started, 30, "both processes to start")
            first = grpc.aio.insecure_channel(listen)
            await asyncio.wait_for(first.channel_ready(), 30)
            await profile_pb2_grpc.ProfileServiceStub(first).UpsertUsers(
                profile_pb2.UpsertUsersRequest(
                    requests=[
                        profile_pb2.UpsertUserRequest(
                            user=profile_pb2.User(
                                user_id=f"u-{i}",
                                wechat=profile_pb2.WeChatIdentity(
                                    openid=f"oProc{i:06d}xyzxyzxyzxyzxyz", following=True
                                ),
                            )
                        )
                        for i in range(50)
                    ]
                ),
                metadata=auth("order"),
            )

            # Each new connection lands on one process or the other: push over fresh
            # connections until both have answered (each push logs its process).
            sent = 0
            while {e.get("process") for e in events(log, "decision")} != {0, 1}:
                assert sent < 400, "every connection went to the same process"
                # (A channel of its own subchannel pool: a new socket, not a shared one.)
                async with grpc.aio.insecure_channel(
                    listen, options=[("grpc.use_local_subchannel_pool", 1)]
                ) as channel:
                    stub = push_pb2_grpc.PushServiceStub(channel)
                    for _ in range(10):
                        answer = await stub.Push(shipped(sent), metadata=auth("order"))
                        assert answer.outcome == types_pb2.ACCEPTED
                        sent += 1
                await asyncio.sleep(0.05)  # the lines of the last turn are written

            async def all_delivered() -> bool:
                return len({s["client_msg_id"] for s in fake.wechat.template_sends}) == sent

            await wait_until(all_delivered, 30, "every push to be delivered")
            # /metrics on the shared admin port: every process's decisions, whichever answers.
            for _ in range(4):
                assert await decisions_on_metrics(admin) == sent

            # A child killed outright is started again with the same index; a client
            # retrying UNAVAILABLE loses nothing meanwhile.
            victim = next(e for e in events(log, "process_started") if e["process"] == 0)
            os.kill(int(str(victim["pid"])), signal.SIGKILL)
            stub = push_pb2_grpc.PushServiceStub(first)
            for i in range(sent, sent + 50):
                for _ in range(100):
                    try:
                        answer = await stub.Push(shipped(i), metadata=auth("order"))
                        break
                    except grpc.aio.AioRpcError as exc:
                        assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
                        await asyncio.sleep(0.1)
                assert answer.outcome == types_pb2.ACCEPTED
            sent += 50

            async def replaced() -> bool:
                return len([e for e in events(log, "process_started") if e["process"] == 0]) == 2

            await wait_until(replaced, 30, "the killed process to be started again")
            assert [e["process"] for e in events(log, "process_exited")] == [0]
            await wait_until(all_delivered, 30, "every push to be delivered after the kill")
            assert await decisions_on_metrics(admin) == sent  # the dead child's counts stay
            await first.close()

            parent.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(parent.wait(), 40) == 0
            assert events(log, "processes_stopped")
            assert not [pid for pid in started_pids(log) if running(pid)]
        finally:
            if parent.returncode is None:
                parent.kill()  # its children get SIGTERM from the kernel (PR_SET_PDEATHSIG)
                await parent.wait()


def herald_serve(*flags: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli.main", "serve", *flags],
        env={**os.environ, "HERALD_LOG_LEVEL": "WARNING", **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_several_processes_need_redis_and_fixed_ports(redis_url: str, tmp_path: Path) -> None:
    no_redis = herald_serve("--processes", "2", HERALD_REDIS_URL="")
    assert no_redis.returncode == 2
    assert "--processes 2 needs the shared state of Redis: set --redis-url" in no_redis.stderr
    any_port = herald_serve("--processes", "2", "--listen", "127.0.0.1:0", HERALD_REDIS_URL=redis_url)
    assert any_port.returncode == 2 and "--processes needs fixed ports: --listen is '127.0.0.1:0'" in any_port.stderr
    zero = herald_serve("--processes", "0", HERALD_REDIS_URL=redis_url)
    assert zero.returncode == 2 and "--processes must be 1 or more, not 0" in zero.stderr


def test_a_child_that_cannot_start_stops_them_all(redis_url: str, tmp_path: Path) -> None:
    broken = tmp_path / "policies"
    broken.mkdir()
    (broken / "scenarios.yaml").write_text("scenarios: [not, a, mapping]\n")
    result = herald_serve(
        "--processes",
        "2",
        HERALD_REDIS_URL=redis_url,
        HERALD_POLICY_DIR=str(broken),
        HERALD_LISTEN=f"127.0.0.1:{free_port()}",
        HERALD_ADMIN_LISTEN=f"127.0.0.1:{free_port()}",
        HERALD_DATA_DIR=str(tmp_path / "var"),
    )
    assert result.returncode == 2
    assert "herald: cannot start:" in result.stderr
    assert "process_cannot_start" in result.stderr


@pytest.mark.timeout(90)
async def test_children_stop_when_their_supervisor_is_killed(redis_url: str, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "HERALD_REDIS_URL": redis_url,
        "HERALD_LISTEN": f"127.0.0.1:{free_port()}",
        "HERALD_ADMIN_LISTEN": f"127.0.0.1:{free_port()}",
        "HERALD_DATA_DIR": str(tmp_path / "var"),
        "HERALD_PROCESSES": "2",
    }
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        parent = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway.cli.main", "serve", env=env, cwd=ROOT, stderr=out
        )

    async def both_started() -> bool:
        return len(events(log, "started")) == 2

    await wait_until(both_started, 30, "both processes to start")
    parent.kill()
    await parent.wait()

    async def children_gone() -> bool:
        return not [pid for pid in started_pids(log) if running(pid)]

    await wait_until(children_gone, 30, "the children to stop after their supervisor died")
    assert len(events(log, "stopping")) == 2  # each stopped in order (SIGTERM), not killed
