"""Durable delivery: a delivery worker killed with SIGKILL mid-run loses nothing.

The API runs in one process (delivery off), workers in others, all on one real Redis
and the fake WeChat. Every accepted message reaches the fake exactly once (the fake
deduplicates by client_msg_id like WeChat; a message re-sent after the crash carries
the same id) or is dead-lettered with a reason.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import grpc
import redis

from gateway.store import keys
from gateway.store.shards import DEFAULT_SHARDS, tags
from gateway.values.jobs import LANES
from herald.v1 import profile_pb2, profile_pb2_grpc, push_pb2, push_pb2_grpc, types_pb2
from tests.e2e.channels_setup import Fakes, fakes, policies_for
from tests.e2e.conftest import auth
from tests.helpers import herald, herald_env, wait_until

MESSAGES = 600


def held(redis_url: str) -> int:
    """Deliveries a worker has taken and not finished (pending in the consumer group)."""
    client = redis.Redis.from_url(redis_url)
    try:
        return sum(
            int(client.xpending(keys.stream(tag, lane), keys.DELIVERY_GROUP)["pending"])
            for tag in tags(DEFAULT_SHARDS)
            for lane in LANES
        )
    finally:
        client.close()


def environment(fake: Fakes, redis_url: str, tmp_path: Path, name: str, **extra: str) -> dict[str, str]:
    policies = policies_for(tmp_path / name, fake)
    return herald_env(redis_url, policies, tmp_path / name / "var", **fake.environ(), **extra)


async def test_a_killed_worker_loses_nothing(clean_redis: str, tmp_path: Path) -> None:
    async with fakes() as fake:
        fake.wechat.latency = 0.1  # slow enough that the kill lands while sends are in flight
        api_env = environment(fake, clean_redis, tmp_path, "api", HERALD_DELIVER="false")
        worker_env = {"HERALD_RECLAIM_SECONDS": "1", "HERALD_DELIVERY_WORKERS": "40"}
        async with herald("serve", api_env, tmp_path / "api.log"):
            channel = grpc.aio.insecure_channel(api_env["HERALD_LISTEN"])
            await asyncio.wait_for(channel.channel_ready(), 30)
            profiles = profile_pb2_grpc.ProfileServiceStub(channel)
            push = push_pb2_grpc.PushServiceStub(channel)
            await profiles.UpsertUsers(
                profile_pb2.UpsertUsersRequest(
                    requests=[
                        profile_pb2.UpsertUserRequest(
                            user=profile_pb2.User(
                                user_id=f"u-{i}",
                                wechat=profile_pb2.WeChatIdentity(openid=f"oCrash{i:05d}xyz", following=True),
                            )
                        )
                        for i in range(MESSAGES)
                    ]
                ),
                metadata=auth("order"),
            )
            requests = [
                push_pb2.PushRequest(
                    request_id=f"r-{i}",
                    user_id=f"u-{i}",
                    scenario="order.shipped",
                    params={"order_id": f"O-{i}", "carrier": "SF", "tracking_no": f"T{i}"},
                )
                for i in range(MESSAGES)
            ]
            answers = await push.PushBatch(push_pb2.PushBatchRequest(requests=requests), metadata=auth("order"))
            ids = [a.message_id for a in answers.responses]
            assert {a.outcome for a in answers.responses} == {types_pb2.ACCEPTED}
            assert fake.wechat.template_sends == []  # the API process does not deliver

            async with herald(
                "worker", environment(fake, clean_redis, tmp_path, "w1", **worker_env), tmp_path / "w1.log"
            ) as first:

                async def some_sent_and_some_held() -> bool:
                    # Killed while it holds deliveries it has not finished: the worst instant.
                    # Frozen first, so what it holds cannot change between the look and the kill.
                    if len(fake.wechat.template_sends) < MESSAGES // 4:
                        return False
                    first.send_signal(signal.SIGSTOP)
                    if held(clean_redis) > 0:
                        return True
                    first.send_signal(signal.SIGCONT)
                    return False

                await wait_until(some_sent_and_some_held, 60, "the first worker to deliver some and hold some")
                first.send_signal(signal.SIGKILL)
                await first.wait()
            sent_before = len(fake.wechat.template_sends)
            assert sent_before < MESSAGES, "the worker finished before the kill; the test proves nothing"

            async with herald(
                "worker", environment(fake, clean_redis, tmp_path, "w2", **worker_env), tmp_path / "w2.log"
            ):

                async def all_settled() -> bool:
                    done = 0
                    for message_id in ids:
                        message = await push.GetMessage(
                            push_pb2.GetMessageRequest(message_id=message_id), metadata=auth("order")
                        )
                        done += message.status in ("delivered", "failed")
                    return done == MESSAGES

                await wait_until(all_settled, 90, "every message to be delivered or dead-lettered")
            await channel.close()

        delivered = [s["client_msg_id"] for s in fake.wechat.template_sends]
        assert len(delivered) == len(set(delivered)) == MESSAGES  # each exactly once
        assert set(delivered) == {f"{m}.wechat_template" for m in ids}
        # The second worker took over what the first held when it died.
        assert "delivery_reclaimed" in (tmp_path / "w2.log").read_text()
        assert fake.wechat.template_calls >= MESSAGES
        # Two worker processes, one access token: the second read it from Redis.
        assert fake.wechat.token_requests == 1
