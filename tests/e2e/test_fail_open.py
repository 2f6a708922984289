"""When Redis goes away: basic fails open (policy), the other categories fail closed."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.app import Gateway
from gateway.metrics import fresh_metrics
from herald.v1 import types_pb2
from tests.e2e.conftest import auth, open_api, settings_for
from tests.e2e.test_arbitration import add_user, price_drop
from tests.e2e.test_push import shipped
from tests.helpers import redis_server


async def test_store_outage(tmp_path: Path) -> None:
    server = redis_server()
    url = server.__enter__()
    gateway = Gateway(settings_for(tmp_path, url), metrics=fresh_metrics())
    await gateway.start()
    api = await open_api(gateway)
    try:
        await add_user(api, "u-1")
        await add_user(api, "u-2")
        assert (await api.push.Push(shipped("r-0"), metadata=auth("order"))).outcome == types_pb2.ACCEPTED

        server.__exit__(None, None, None)  # Redis is gone

        health = health_pb2_grpc.HealthStub(api.channel)
        for _ in range(50):
            answer = await health.Check(health_pb2.HealthCheckRequest(service="herald.v1.PushService"))
            if answer.status == health_pb2.HealthCheckResponse.NOT_SERVING:
                break
            await asyncio.sleep(0.1)
        assert answer.status == health_pb2.HealthCheckResponse.NOT_SERVING

        answer = await api.push.Push(shipped("r-1"), metadata=auth("order"))
        assert answer.outcome == types_pb2.ACCEPTED
        assert answer.detail.startswith("fail-open (state store unreachable")
        assert gateway.metrics.registry.get_sample_value("herald_fail_open_decisions_total", {"category": "basic"}) == 1

        with pytest.raises(grpc.aio.AioRpcError) as info:
            await api.push.Push(price_drop("r-2"), metadata=auth("growth"))  # reminder: fail_mode closed
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE
        assert "state store redis://127.0.0.1" in (info.value.details() or "")

        with pytest.raises(grpc.aio.AioRpcError) as info:
            await api.push.Push(shipped("r-3", user_id="u-2"), metadata=auth("order"))  # never seen here
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE
        assert "has not seen user 'u-2' recently" in (info.value.details() or "")

        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{gateway.admin_port}/readyz") as response,
        ):
            assert response.status == 503
    finally:
        await api.channel.close()
        await gateway.stop(grace=1.0)
