"""A real gateway on a free port (in this process), for each store, and a real gRPC
client to call it with."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest

from gateway.app import Gateway
from gateway.config import Settings
from gateway.metrics import fresh_metrics
from herald.v1 import profile_pb2, profile_pb2_grpc, push_pb2_grpc
from tests.conftest import POLICIES, ROOT

if TYPE_CHECKING:
    from tests.e2e.channels_setup import Fakes

KEYS = {
    "order": "hk_order_SAMPLE_not_for_production",
    "logistics": "hk_logistics_SAMPLE_not_for_production",
    "growth": "hk_growth_SAMPLE_not_for_production",
    "marketing": "hk_marketing_SAMPLE_not_for_production",
}
OPENID = "oAbCdEfGhIjKlMnOpQrStUvWxYz1"


def auth(bu: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {KEYS[bu]}"),)


@dataclass
class Api:
    gateway: Gateway
    channel: grpc.aio.Channel
    push: push_pb2_grpc.PushServiceStub
    profiles: profile_pb2_grpc.ProfileServiceStub

    async def add_user(self, user_id: str = "u-1", **fields: object) -> profile_pb2.User:
        user = profile_pb2.User(user_id=user_id, **fields)  # type: ignore[arg-type]
        return await self.profiles.UpsertUser(profile_pb2.UpsertUserRequest(user=user), metadata=auth("order"))

    async def add_follower(self, user_id: str = "u-1") -> profile_pb2.User:
        return await self.add_user(
            user_id,
            wechat=profile_pb2.WeChatIdentity(openid=OPENID, following=True),
            phone="+8613800138000",
        )


def settings_for(tmp_path: Path, redis_url: str = "", policy_dir: Path = POLICIES) -> Settings:
    return Settings(
        listen="127.0.0.1:0",
        admin_listen="127.0.0.1:0",
        redis_url=redis_url,
        policy_dir=policy_dir,
        credentials=ROOT / "config" / "credentials.sample.yaml",
        data_dir=tmp_path / "data",
        grace_seconds=2.0,
    )


async def open_api(gateway: Gateway) -> Api:
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}")
    return Api(gateway, channel, push_pb2_grpc.PushServiceStub(channel), profile_pb2_grpc.ProfileServiceStub(channel))


@pytest.fixture(params=["memory", "redis"])
async def api(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Api]:
    redis_url = request.getfixturevalue("clean_redis") if request.param == "redis" else ""
    gateway = Gateway(settings_for(tmp_path, redis_url), metrics=fresh_metrics())
    await gateway.start()
    client = await open_api(gateway)
    try:
        yield client
    finally:
        await client.channel.close()
        await gateway.stop(grace=1.0)


@pytest.fixture
async def fake() -> AsyncIterator[Fakes]:
    """The fake providers (WeChat, Alibaba SMS, FCM, JPush), running."""
    from tests.e2e.channels_setup import fakes

    async with fakes() as running:
        yield running
