"""Load is turned away at the door, and contention is never an outage."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import pytest

from gateway.app import Gateway
from gateway.metrics import fresh_metrics
from herald.v1 import profile_pb2, push_pb2, types_pb2
from tests.e2e.conftest import Api, auth, open_api, settings_for
from tests.e2e.test_push import shipped


async def test_calls_beyond_the_limit_are_refused_at_once_with_a_hint(tmp_path: Path, clean_redis: str) -> None:
    settings = settings_for(tmp_path, clean_redis).replace(max_in_flight=1)
    gateway = Gateway(settings, metrics=fresh_metrics())
    await gateway.start()
    api = await open_api(gateway)
    try:
        users = [
            profile_pb2.UpsertUserRequest(user=profile_pb2.User(user_id=f"u-{i}", phone="+8613800138000"))
            for i in range(1000)
        ]
        await api.profiles.UpsertUsers(profile_pb2.UpsertUsersRequest(requests=users), metadata=auth("order"))
        batch = push_pb2.PushBatchRequest(requests=[shipped(f"b-{i}", user_id=f"u-{i}") for i in range(1000)])
        running = asyncio.ensure_future(api.push.PushBatch(batch, metadata=auth("order")))
        for _ in range(10_000):  # until the batch holds the only place
            if gateway.admission.busy:
                break
            await asyncio.sleep(0)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await api.push.Push(shipped("r-1", user_id="u-1"), metadata=auth("order"))
        assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "limit of 1 calls in flight; retry in about 100 ms" in (info.value.details() or "")
        assert ("grpc-retry-pushback-ms", "100") in tuple(info.value.trailing_metadata() or ())
        done = await running
        assert {r.outcome for r in done.responses} == {types_pb2.ACCEPTED}
        answer = await api.push.Push(shipped("r-1", user_id="u-1"), metadata=auth("order"))  # room again
        assert answer.outcome == types_pb2.ACCEPTED
        assert gateway.metrics.registry.get_sample_value("herald_requests_shed_total", {"method": "Push"}) == 1
    finally:
        await api.channel.close()
        await gateway.stop(grace=1.0)


@asynccontextmanager
async def two_replicas(tmp_path: Path, redis_url: str) -> AsyncIterator[tuple[Api, Api]]:
    """Two gateways on one Redis, each with its client; stopped on exit."""
    one = Gateway(settings_for(tmp_path / "a", redis_url), metrics=fresh_metrics())
    two = Gateway(settings_for(tmp_path / "b", redis_url), metrics=fresh_metrics())
    await one.start()
    await two.start()
    a, b = await open_api(one), await open_api(two)
    try:
        yield a, b
    finally:
        await a.channel.close()
        await b.channel.close()
        await one.stop(grace=1.0)
        await two.stop(grace=1.0)


@pytest.mark.parametrize("round_", range(3))
async def test_seventy_pushes_for_one_user_over_two_replicas_are_all_decided(
    tmp_path: Path, clean_redis: str, round_: int
) -> None:
    async with two_replicas(tmp_path, clean_redis) as (a, b):
        await a.add_follower("u-busy")  # WeChat templates first: only the safety cap counts
        answers = await asyncio.gather(
            *(
                (a if i % 2 else b).push.Push(
                    shipped(f"r-{round_}-{i}", user_id="u-busy", dedup_key=""), metadata=auth("order")
                )
                for i in range(70)
            )
        )
        outcomes = [(x.outcome, x.reason) for x in answers]
        # The safety cap (60 an hour) holds exactly across both; nobody is refused.
        assert outcomes.count((types_pb2.ACCEPTED, types_pb2.REASON_UNSPECIFIED)) == 60
        assert outcomes.count((types_pb2.SUPPRESSED, types_pb2.SAFETY_CAP)) == 10


async def test_the_batch_decisions_lines_count_each_claim_once_under_contention(
    tmp_path: Path, clean_redis: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two replicas decide PushBatches for the same few users at once: claims whose user
    the other replica changed first are decided again, and the ``decisions`` lines count
    each claim once, in the round that committed it."""
    from gateway.logs import configure

    configure("INFO", json=True)
    async with two_replicas(tmp_path, clean_redis) as (a, b):
        users = [f"u-{n}" for n in range(4)]
        for user in users:
            await a.add_follower(user)
        capsys.readouterr()
        conflicts, sent = 0.0, 0
        for round_ in range(20):  # until the replicas have raced for a user
            batches = [
                push_pb2.PushBatchRequest(
                    requests=[
                        shipped(f"r-{round_}-{side}-{i}", user_id=users[i % len(users)], dedup_key="")
                        for i in range(12)
                    ]
                )
                for side in range(4)
            ]
            answers = await asyncio.gather(
                *(
                    (a if side % 2 else b).push.PushBatch(batch, metadata=auth("order"))
                    for side, batch in enumerate(batches)
                )
            )
            assert all(r.message_id for answer in answers for r in answer.responses)
            sent += sum(len(batch.requests) for batch in batches)
            conflicts = sum(
                api.gateway.metrics.registry.get_sample_value("herald_state_conflicts_total") or 0.0 for api in (a, b)
            )
            if conflicts:
                break
        assert conflicts, "the replicas never raced for a user: the test proved nothing"
        events = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
        lines = [e for e in events if e.get("event") == "decisions"]
        assert sum(e["count"] for e in lines) == sent
        assert sum(sum(e["outcomes"].values()) for e in lines) == sent
