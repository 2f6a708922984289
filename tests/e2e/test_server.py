"""The server's surroundings: health, reflection, rate limits, admin HTTP."""

from __future__ import annotations

import shutil
from pathlib import Path

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from gateway.app import Gateway
from gateway.metrics import fresh_metrics
from tests.conftest import POLICIES
from tests.e2e.conftest import Api, auth, open_api, settings_for
from tests.e2e.test_push import shipped


async def test_health_is_serving(api: Api) -> None:
    stub = health_pb2_grpc.HealthStub(api.channel)
    for service in ("", "herald.v1.PushService", "herald.v1.ProfileService"):
        answer = await stub.Check(health_pb2.HealthCheckRequest(service=service))
        assert answer.status == health_pb2.HealthCheckResponse.SERVING


async def test_reflection_lists_the_services(api: Api) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(api.channel)

    async def ask() -> reflection_pb2.ServerReflectionResponse:
        yield_ = reflection_pb2.ServerReflectionRequest(list_services="")
        async for answer in stub.ServerReflectionInfo(iter([yield_])):
            return answer
        raise AssertionError("no answer")

    answer = await ask()
    names = {s.name for s in answer.list_services_response.service}
    assert {"herald.v1.PushService", "herald.v1.ProfileService", "grpc.health.v1.Health"} <= names


async def test_admin_http_endpoints(api: Api) -> None:
    base = f"http://127.0.0.1:{api.gateway.admin_port}"
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{base}/healthz") as response:
            assert response.status == 200
        async with session.get(f"{base}/readyz") as response:
            body = await response.json()
            assert response.status == 200 and body["policy"] == api.gateway.policies.current.version
        async with session.get(f"{base}/metrics") as response:
            text = await response.text()
    assert 'herald_decisions_total{bu="order",category="basic",outcome="SUPPRESSED",reason="KILL_SWITCH"} 0.0' in text
    assert "herald_policy_info{version=" in text


async def test_rate_limit_is_resource_exhausted(tmp_path: Path) -> None:
    policy_dir = tmp_path / "policies"
    shutil.copytree(POLICIES, policy_dir)
    path = policy_dir / "business_units.yaml"
    path.write_text(
        path.read_text().replace("rate_limit: {requests: 2000, per: 1s}", "rate_limit: {requests: 3, per: 60s}", 1)
    )
    gateway = Gateway(settings_for(tmp_path, policy_dir=policy_dir), metrics=fresh_metrics())
    await gateway.start()
    api = await open_api(gateway)
    try:
        for i in range(3):
            await api.push.Push(shipped(f"r-{i}"), metadata=auth("order"))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await api.push.Push(shipped("r-3"), metadata=auth("order"))
        assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "over its rate limit of 3 requests per 1m" in (info.value.details() or "")
        refused = gateway.metrics.registry.get_sample_value(
            "herald_requests_refused_total", {"method": "Push", "code": "RESOURCE_EXHAUSTED"}
        )
        assert refused == 1
    finally:
        await api.channel.close()
        await gateway.stop(grace=1.0)
