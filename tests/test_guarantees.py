"""Herald's guarantees, broken on purpose (docs/guarantees.md): a gateway killed
with SIGKILL in the middle of a run, Redis restarted in the middle of a run, an API-only
gateway deciding fail-open while Redis does not answer and stopped before it is back.
Clients retry whatever was cut off with the same request_id, as a careful client does.
Each test counts what was lost (accepted and never delivered: must be 0), what was
stranded (a request_id that never got an answer again: must be 0), and what was sent
twice, and prints the figures."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from herald.v1 import profile_pb2, profile_pb2_grpc, push_pb2, push_pb2_grpc, types_pb2
from tests.e2e.channels_setup import Fakes, fakes, policies_for
from tests.e2e.conftest import auth
from tests.helpers import RedisProcess, herald, herald_env, wait_until

MESSAGES = 2_000
CLIENTS = 32


def environment(fake: Fakes, redis_url: str, tmp_path: Path, name: str, **extra: str) -> dict[str, str]:
    policies = policies_for(tmp_path / name, fake)
    return herald_env(redis_url, policies, tmp_path / name / "var", **fake.environ(), **extra)


def shipped(i: int) -> push_pb2.PushRequest:
    return push_pb2.PushRequest(
        request_id=f"r-{i}",
        user_id=f"u-{i % 500}",
        scenario="order.shipped",
        params={"order_id": f"O-{i}", "carrier": "SF", "tracking_no": f"T{i}"},
    )


async def load_users(target: str, count: int = 500) -> None:
    async with grpc.aio.insecure_channel(target) as channel:
        await asyncio.wait_for(channel.channel_ready(), 30)
        profiles = profile_pb2_grpc.ProfileServiceStub(channel)
        await profiles.UpsertUsers(
            profile_pb2.UpsertUsersRequest(
                requests=[
                    profile_pb2.UpsertUserRequest(
                        user=profile_pb2.User(
                            user_id=f"u-{i}",
                            wechat=profile_pb2.WeChatIdentity(openid=f"oGuarantee{i:05d}xyz", following=True),
                        )
                    )
                    for i in range(count)
                ]
            ),
            metadata=auth("order"),
        )


@dataclass
class Clients:
    """Careful clients: each request is sent until it gets an answer, with the same
    request_id every time (a cut-off call, UNAVAILABLE, a deadline)."""

    target: str
    answers: dict[int, push_pb2.PushResponse] = field(default_factory=dict)
    retries: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    async def run(self, count: int, patience: float = 180.0) -> None:
        todo = iter(range(count))
        began = time.monotonic()
        async with grpc.aio.insecure_channel(self.target) as channel:
            stub = push_pb2_grpc.PushServiceStub(channel)

            async def client() -> None:
                for i in todo:
                    while True:
                        try:
                            self.answers[i] = await stub.Push(shipped(i), metadata=auth("order"), timeout=5)
                            break
                        except grpc.aio.AioRpcError as exc:
                            code = exc.code().name
                            self.errors[code] = self.errors.get(code, 0) + 1
                            assert code in ("UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED", "RESOURCE_EXHAUSTED"), (
                                code,
                                exc.details(),
                            )
                            assert time.monotonic() - began < patience, f"r-{i} never answered: {exc.details()}"
                            self.retries += 1
                            await asyncio.sleep(0.2)

            await asyncio.gather(*(client() for _ in range(CLIENTS)))


def delivered(fake: Fakes) -> set[str]:
    """The message ids the fake WeChat delivered."""
    return {client_id.split(".")[0] for client_id in fake.wechat.delivered_ids()}


def tally(name: str, clients: Clients, fake: Fakes) -> tuple[int, int]:
    accepted = {a.message_id for a in clients.answers.values() if a.outcome == types_pb2.ACCEPTED}
    sent = delivered(fake)
    lost = accepted - sent
    print(
        f"\n{name}: {len(clients.answers)} answered ({len(accepted)} accepted) after {clients.retries} retries "
        f"{clients.errors}; delivered {len(sent)}; lost {len(lost)}; sent again and deduplicated by the "
        f"provider {fake.wechat.repeats}; delivered without an answer (decided, answer cut off) "
        f"{len(sent - accepted)}"
    )
    return len(lost), len(sent - accepted)


async def until(check: Callable[[], bool], within: float, what: str) -> None:
    async def ready() -> bool:
        return check()

    await wait_until(ready, within, what)


@pytest.mark.timeout(400)
async def test_a_gateway_killed_mid_run_loses_nothing_and_strands_no_request(tmp_path: Path) -> None:
    redis = RedisProcess()
    redis.start()
    try:
        async with fakes() as fake:
            fake.wechat.latency = 0.05
            env = environment(fake, redis.url, tmp_path, "gw")
            async with herald("serve", env, tmp_path / "first.log") as first:
                await load_users(env["HERALD_LISTEN"])
                clients = Clients(env["HERALD_LISTEN"])
                run = asyncio.create_task(clients.run(MESSAGES))
                await until(lambda: len(clients.answers) >= MESSAGES // 4, 120, "a quarter of the pushes")
                first.send_signal(signal.SIGKILL)  # mid-decision and mid-delivery
                await first.wait()
            answered_before = len(clients.answers)
            assert answered_before < MESSAGES, "the run finished before the kill; the test proves nothing"
            async with herald("serve", env, tmp_path / "second.log"):
                await run  # every request answered again: none stranded
                accepted = {a.message_id for a in clients.answers.values() if a.outcome == types_pb2.ACCEPTED}
                await until(lambda: accepted <= delivered(fake), 120, "every accepted message to be delivered")
            lost, _ = tally("SIGKILL of a gateway doing API and delivery", clients, fake)
            assert lost == 0
            assert len(clients.answers) == MESSAGES
            assert {a.outcome for a in clients.answers.values()} <= {types_pb2.ACCEPTED, types_pb2.SUPPRESSED}
    finally:
        redis.close()


@pytest.mark.timeout(400)
async def test_redis_restarted_mid_run_loses_nothing(tmp_path: Path) -> None:
    redis = RedisProcess(aof=True)
    redis.start()
    try:
        async with fakes() as fake:
            fake.wechat.latency = 0.01
            env = environment(fake, redis.url, tmp_path, "gw")
            async with herald("serve", env, tmp_path / "gw.log"):
                await load_users(env["HERALD_LISTEN"])
                clients = Clients(env["HERALD_LISTEN"])
                run = asyncio.create_task(clients.run(MESSAGES))
                await until(lambda: len(clients.answers) >= MESSAGES // 3, 120, "a third of the pushes")
                redis.stop()  # SHUTDOWN: the AOF is fsynced, Redis goes away for a while
                await asyncio.sleep(2.0)
                redis.start()
                await run
                accepted = {a.message_id for a in clients.answers.values() if a.outcome == types_pb2.ACCEPTED}
                await until(lambda: accepted <= delivered(fake), 120, "every accepted message to be delivered")
            lost, _ = tally("Redis restarted mid-run", clients, fake)
            assert lost == 0
    finally:
        redis.close()


@pytest.mark.timeout(300)
async def test_an_api_only_gateway_fails_open_to_its_spool_and_hands_it_over(tmp_path: Path) -> None:
    redis = RedisProcess()
    redis.start()
    try:
        async with fakes() as fake:
            api_env = environment(fake, redis.url, tmp_path, "api", HERALD_DELIVER="false")
            worker_env = environment(fake, redis.url, tmp_path, "w")
            async with herald("serve", api_env, tmp_path / "api-1.log") as api:
                await load_users(api_env["HERALD_LISTEN"], 20)
                async with grpc.aio.insecure_channel(api_env["HERALD_LISTEN"]) as channel:
                    stub = push_pb2_grpc.PushServiceStub(channel)
                    seen = [await stub.Push(shipped(i), metadata=auth("order")) for i in range(20)]
                    redis.freeze()  # Redis is up but answers nothing
                    open_answers = [
                        await stub.Push(shipped(1000 + i), metadata=auth("order"), timeout=10) for i in range(20)
                    ]
                assert {a.outcome for a in open_answers} == {types_pb2.ACCEPTED}
                assert all(a.detail.startswith("fail-open (state store unreachable") for a in open_answers)
                api.send_signal(signal.SIGTERM)  # stopped while Redis is still away
                await asyncio.wait_for(api.wait(), 30)
            log = (tmp_path / "api-1.log").read_text()
            assert '"spool_kept"' in log and '"entries":20' in log
            redis.thaw()
            async with (
                herald("serve", api_env, tmp_path / "api-2.log"),
                herald("worker", worker_env, tmp_path / "w.log"),
            ):
                wanted = {a.message_id for a in seen + open_answers}
                await until(lambda: wanted <= delivered(fake), 60, "the spooled messages to be delivered")
                async with grpc.aio.insecure_channel(api_env["HERALD_LISTEN"]) as channel:
                    stub = push_pb2_grpc.PushServiceStub(channel)
                    message = await stub.GetMessage(
                        push_pb2.GetMessageRequest(message_id=open_answers[0].message_id), metadata=auth("order")
                    )
                    assert message.request_id == "r-1000"
            print("\nAPI-only fail-open: 20 decided without Redis, 20 delivered after it came back, 0 lost")
    finally:
        redis.close()
