"""Hot reload: a good new set serves, a bad one is refused and the old keeps serving."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from gateway.app import Gateway
from gateway.metrics import fresh_metrics
from herald.v1 import push_pb2
from tests.conftest import POLICIES
from tests.e2e.conftest import Api, auth, open_api, settings_for


@pytest.fixture
async def live(tmp_path: Path) -> AsyncIterator[tuple[Api, Path]]:
    policy_dir = tmp_path / "policies"
    shutil.copytree(POLICIES, policy_dir)
    gateway = Gateway(settings_for(tmp_path, policy_dir=policy_dir), metrics=fresh_metrics())
    await gateway.start()
    api = await open_api(gateway)
    try:
        yield api, policy_dir
    finally:
        await api.channel.close()
        await gateway.stop(grace=1.0)


async def version(api: Api) -> str:
    info = await api.push.GetPolicyInfo(push_pb2.GetPolicyInfoRequest(), metadata=auth("order"))
    return info.version


def metric(api: Api, name: str, labels: dict[str, str]) -> float:
    value = api.gateway.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def grant_checkin_to_order(policy_dir: Path) -> None:
    path = policy_dir / "business_units.yaml"
    text = path.read_text(encoding="utf-8")
    granted = "scenarios: [order.paid, order.shipped,"
    assert granted in text
    path.write_text(text.replace(granted, "scenarios: [checkin, order.paid, order.shipped,"), encoding="utf-8")


async def test_reload_serves_a_good_new_set(live: tuple[Api, Path]) -> None:
    api, policy_dir = live
    old = await version(api)
    checkin = push_pb2.PushRequest(request_id="r-1", user_id="u-1", scenario="checkin", params={"streak_days": "3"})
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await api.push.Push(checkin, metadata=auth("order"))
    assert info.value.code() is grpc.StatusCode.PERMISSION_DENIED

    grant_checkin_to_order(policy_dir)
    api.gateway.reload()  # what SIGHUP does
    new = await version(api)
    assert new != old
    response = await api.push.Push(checkin, metadata=auth("order"))
    assert response.policy_version == new
    assert metric(api, "herald_policy_reloads_total", {"result": "ok"}) == 1
    assert metric(api, "herald_policy_info", {"version": new}) == 1
    assert metric(api, "herald_policy_info", {"version": old}) == 0


async def test_a_bad_set_is_refused_and_the_last_good_one_keeps_serving(live: tuple[Api, Path]) -> None:
    api, policy_dir = live
    old = await version(api)
    (policy_dir / "categories.yaml").write_text("categories:\n  marketing:\n    caps: [{window: 1dya, limit: 1}]\n")
    api.gateway.reload()
    assert await version(api) == old
    assert metric(api, "herald_policy_reloads_total", {"result": "refused"}) == 1
    assert "unknown unit 'dya'" in (api.gateway.policies.last_error or "")


async def test_a_changed_file_is_picked_up_without_a_signal(live: tuple[Api, Path]) -> None:
    api, policy_dir = live
    old = await version(api)
    grant_checkin_to_order(policy_dir)
    for _ in range(60):
        await asyncio.sleep(0.1)
        if await version(api) != old:
            break
    assert await version(api) != old
