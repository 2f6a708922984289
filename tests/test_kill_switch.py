"""The kill switch across replicas: set through one process's admin API, honoured by
another within a second; 10,000 queued deliveries kept and not sent; on clearing, the
ones still in time are sent and the others end with KILL_SWITCH."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import grpc
import pytest
import redis.asyncio as aioredis

from gateway.store import keys
from gateway.store.shards import DEFAULT_SHARDS, tags
from herald.v1 import profile_pb2, profile_pb2_grpc, push_pb2, push_pb2_grpc, types_pb2
from tests.conftest import ROOT
from tests.e2e.channels_setup import fakes, policies_for
from tests.e2e.conftest import auth
from tests.e2e.test_push import ts
from tests.helpers import free_port, herald, wait_until

MESSAGES = 10_000
ADMIN_TOKEN = "adm-0123456789abcdef"


def shipped(i: int, deadline: datetime | None) -> push_pb2.PushRequest:
    request = push_pb2.PushRequest(
        request_id=f"r-{i}",
        user_id=f"u-{i}",
        scenario="order.shipped",
        params={"order_id": f"O-{i}", "carrier": "SF", "tracking_no": f"T{i}"},
    )
    if deadline is not None:
        request.deadline.CopyFrom(ts(deadline))
    return request


@pytest.mark.timeout(300)
async def test_kill_switch_stops_everywhere_keeps_and_releases(clean_redis: str, tmp_path: Path) -> None:
    async with fakes() as fake:
        policy_dir = policies_for(tmp_path, fake)

        def env(name: str, **extra: str) -> dict[str, str]:
            return {
                **os.environ,
                **fake.environ(),
                "HERALD_REDIS_URL": clean_redis,
                "HERALD_POLICY_DIR": str(policy_dir),
                "HERALD_LISTEN": f"127.0.0.1:{free_port()}",
                "HERALD_ADMIN_LISTEN": f"127.0.0.1:{free_port()}",
                "HERALD_ADMIN_TOKEN": ADMIN_TOKEN,
                "HERALD_DATA_DIR": str(tmp_path / name),
                "HERALD_LOG_LEVEL": "WARNING",
                **extra,
            }

        a_env, b_env = env("a", HERALD_DELIVER="false"), env("b", HERALD_DELIVER="false")
        async with herald("serve", a_env, tmp_path / "a.log"), herald("serve", b_env, tmp_path / "b.log"):
            a = grpc.aio.insecure_channel(a_env["HERALD_LISTEN"])
            b = grpc.aio.insecure_channel(b_env["HERALD_LISTEN"])
            await asyncio.wait_for(asyncio.gather(a.channel_ready(), b.channel_ready()), 30)
            profiles = profile_pb2_grpc.ProfileServiceStub(a)
            push_a, push_b = push_pb2_grpc.PushServiceStub(a), push_pb2_grpc.PushServiceStub(b)
            for start in range(0, MESSAGES + 10, 1000):
                await profiles.UpsertUsers(
                    profile_pb2.UpsertUsersRequest(
                        requests=[
                            profile_pb2.UpsertUserRequest(
                                user=profile_pb2.User(
                                    user_id=f"u-{i}",
                                    wechat=profile_pb2.WeChatIdentity(openid=f"oKill{i:06d}xyz", following=True),
                                )
                            )
                            for i in range(start, min(start + 1000, MESSAGES + 10))
                        ]
                    ),
                    metadata=auth("order"),
                )
            # Half with a deadline that passes while the switch is on, half without.
            short = datetime.now(UTC) + timedelta(seconds=35)
            ids: list[str] = []
            # Paced like a real client: 'order' may send 2,000 requests a second.
            began = time.monotonic()
            for start in range(0, MESSAGES, 1000):
                await asyncio.sleep(max(0.0, began + start / 1000 * 0.6 - time.monotonic()))
                stub = push_a if start % 2000 else push_b
                batch = [shipped(i, short if i < MESSAGES // 2 else None) for i in range(start, start + 1000)]
                answers = await stub.PushBatch(push_pb2.PushBatchRequest(requests=batch), metadata=auth("order"))
                assert {r.outcome for r in answers.responses} == {types_pb2.ACCEPTED}
                ids += [r.message_id for r in answers.responses]

            # The switch, through A's admin API.
            admin_a = f"http://{a_env['HERALD_ADMIN_LISTEN']}/admin/kill-switches"
            headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
            async with aiohttp.ClientSession() as http:
                body = {
                    "scope": "scenario",
                    "value": "order.shipped",
                    "reason": "wrong carrier data",
                    "actor": "sre-li",
                }
                async with http.post(admin_a, json=body, headers=headers) as created:
                    assert created.status == 201, await created.text()
                    switch = (await created.json())["switch"]
            set_at = time.monotonic()

            # B suppresses the next request within a second.
            n = MESSAGES
            while True:
                answer = await push_b.Push(shipped(n, None), metadata=auth("order"))
                n += 1
                if answer.outcome == types_pb2.SUPPRESSED:
                    break
                assert time.monotonic() - set_at < 1.0, "replica B still accepted a second after the switch"
            assert answer.reason == types_pb2.KILL_SWITCH
            assert time.monotonic() - set_at < 1.0
            # (Requests B accepted in that moment were queued before it knew: they are
            # kept like the others.)
            extra = n - MESSAGES - 1

            # A worker takes the queue: everything is kept, nothing is sent.
            store = aioredis.Redis.from_url(clean_redis)
            async with herald("worker", env("w"), tmp_path / "w.log"):

                async def parked() -> int:
                    return sum([int(await store.zcard(keys.parked(tag))) for tag in tags(DEFAULT_SHARDS)])

                async def all_kept() -> bool:
                    return await parked() == MESSAGES + extra

                await wait_until(all_kept, 90, "every queued delivery to be kept")
                assert fake.wechat.template_sends == []
                held = await push_a.GetMessage(push_pb2.GetMessageRequest(message_id=ids[-1]), metadata=auth("order"))
                assert held.status == "held"
                assert "wrong carrier data" in held.timeline[-1].detail

                # The short deadlines pass while the switch is on: those end with KILL_SWITCH.
                await asyncio.sleep(max(0.0, (short - datetime.now(UTC)).total_seconds()) + 1.0)

                async def short_ones_ended() -> bool:
                    return await parked() == MESSAGES // 2 + extra

                await wait_until(short_ones_ended, 30, "the expired deliveries to end")
                assert fake.wechat.template_sends == []

                # Cleared through B, with the CLI.
                cli_env = {
                    **os.environ,
                    "HERALD_ADMIN_URL": f"http://{b_env['HERALD_ADMIN_LISTEN']}",
                    "HERALD_ADMIN_TOKEN": ADMIN_TOKEN,
                }
                proc = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "gateway.cli.main",
                    "kill",
                    "clear",
                    switch["id"],
                    "--actor",
                    "sre-li",
                    "--note",
                    "data fixed",
                    env=cli_env,
                    cwd=ROOT,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                )
                out, err = await proc.communicate()
                assert proc.returncode == 0, err.decode()
                assert "cleared" in out.decode()

                async def sent() -> bool:
                    return len(fake.wechat.template_sends) == MESSAGES // 2 + extra

                await wait_until(sent, 120, "the kept deliveries to go out")

            delivered = {s["client_msg_id"].split(".")[0] for s in fake.wechat.template_sends}
            assert delivered >= set(ids[MESSAGES // 2 :])
            assert not delivered & set(ids[: MESSAGES // 2])
            ended = await push_a.GetMessage(push_pb2.GetMessageRequest(message_id=ids[0]), metadata=auth("order"))
            assert ended.status == "expired"
            assert ended.reason == types_pb2.KILL_SWITCH

            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "gateway.cli.main",
                "kill",
                "history",
                env=cli_env,
                cwd=ROOT,
                stdout=asyncio.subprocess.PIPE,
            )
            history, _ = await proc.communicate()
            lines = history.decode().splitlines()
            assert "clear" in lines[0] and "data fixed" in lines[0] and "set" in lines[1]
            assert "scenario=order.shipped" in lines[1] and "wrong carrier data" in lines[1]
            await store.aclose()
            await a.close()
            await b.close()
