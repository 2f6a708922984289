"""Two gateway processes on one real Redis, and on a Redis Cluster: caps hold exactly
under concurrency."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest

from herald.v1 import profile_pb2, profile_pb2_grpc, push_pb2, push_pb2_grpc, types_pb2
from tests.conftest import ROOT
from tests.e2e.conftest import auth
from tests.helpers import free_port, wait_for_port

USERS = 20
CLAIMS_PER_USER = 12  # reminders; the daily cap is 2


def daytime_zone() -> str:
    """A fixed-offset zone where it is now between 10:00 and 16:59, so that quiet hours
    never interfere with the test whatever time CI runs."""
    hour = datetime.now(UTC).hour
    offset = (13 - hour + 12) % 24 - 12  # local hour 13 (+- the current minute)
    return "Etc/GMT" + ("-" if offset > 0 else "+") + str(abs(offset)) if offset else "Etc/GMT"


@pytest.fixture(params=["redis", pytest.param("cluster", marks=pytest.mark.cluster)])
def two_gateways(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[list[str]]:
    """Two `herald serve` processes on one Redis, or on a Redis Cluster."""
    cluster = request.param == "cluster"
    url = request.getfixturevalue("clean_cluster" if cluster else "clean_redis")
    procs, targets = [], []
    for index in range(2):
        port = free_port()
        env = {
            **os.environ,
            "HERALD_LISTEN": f"127.0.0.1:{port}",
            "HERALD_ADMIN_LISTEN": f"127.0.0.1:{free_port()}",
            "HERALD_REDIS_URL": url,
            "HERALD_REDIS_CLUSTER": "true" if cluster else "false",
            "HERALD_DATA_DIR": str(tmp_path / f"var{index}"),
            "HERALD_LOG_LEVEL": "WARNING",
        }
        with (tmp_path / f"gw{index}.log").open("wb") as log:
            procs.append(
                subprocess.Popen([sys.executable, "-m", "gateway.cli.main", "serve"], env=env, cwd=ROOT, stderr=log)
            )
        targets.append(f"127.0.0.1:{port}")
    try:
        for target in targets:
            wait_for_port(int(target.rsplit(":", 1)[1]), timeout=30)
        yield targets
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=20)


async def test_caps_hold_exactly_across_two_processes(two_gateways: list[str]) -> None:
    zone = daytime_zone()
    channels = [grpc.aio.insecure_channel(t) for t in two_gateways]
    try:
        profiles = profile_pb2_grpc.ProfileServiceStub(channels[0])
        users = [
            profile_pb2.UpsertUserRequest(
                user=profile_pb2.User(
                    user_id=f"u-{i}",
                    timezone=zone,
                    device_tokens=[
                        profile_pb2.DeviceToken(token=f"t{i}", platform=profile_pb2.IOS, provider=profile_pb2.APNS)
                    ],
                )
            )
            for i in range(USERS)
        ]
        await profiles.UpsertUsers(profile_pb2.UpsertUsersRequest(requests=users), metadata=auth("growth"))
        stubs = [push_pb2_grpc.PushServiceStub(c) for c in channels]

        async def claim(user: int, n: int) -> tuple[int, int]:
            request = push_pb2.PushRequest(
                request_id=f"r-{user}-{n}",
                user_id=f"u-{user}",
                scenario="price.drop",
                params={"item_name": "kettle", "new_price": "99"},
            )
            answer = await stubs[n % 2].Push(request, metadata=auth("growth"))
            return user, answer.outcome

        results = await asyncio.gather(*(claim(u, n) for n in range(CLAIMS_PER_USER) for u in range(USERS)))
    finally:
        for channel in channels:
            await channel.close()
    accepted = Counter(user for user, outcome in results if outcome == types_pb2.ACCEPTED)
    outcomes = Counter(outcome for _, outcome in results)
    assert dict(accepted) == {u: 2 for u in range(USERS)}, outcomes
    assert outcomes[types_pb2.SUPPRESSED] == USERS * (CLAIMS_PER_USER - 2)
