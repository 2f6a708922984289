"""The kill-switch admin API: the token, the checks, and what a switch does to queued
and scheduled deliveries in one process."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.app import Gateway
from gateway.clock import FixedClock
from gateway.metrics import fresh_metrics
from herald.v1 import push_pb2, types_pb2
from tests.e2e.conftest import Api, auth, open_api, settings_for
from tests.e2e.test_arbitration import add_user, local, marketing

TOKEN = "admin-token-for-tests"


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[tuple[Api, FixedClock]]:
    clock = FixedClock(local(10))
    gateway = Gateway(settings_for(tmp_path).replace(admin_token=TOKEN), metrics=fresh_metrics(), clock=clock)
    await gateway.start()
    client = await open_api(gateway)
    try:
        yield client, clock
    finally:
        await client.channel.close()
        await gateway.stop(grace=1.0)


async def call(api: Api, method: str, path: str, body: Any = None, token: str = TOKEN) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.request(
            method,
            f"http://127.0.0.1:{api.gateway.admin_port}{path}",
            json=body,
            headers={"Authorization": f"Bearer {token}"},
        ) as answer,
    ):
        return answer.status, await answer.json()


SWITCH = {"scope": "campaign", "value": "c-double11.presale", "reason": "wrong price", "actor": "ops-wang"}


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        ({**SWITCH, "scope": "planet"}, 400, "'scope' must be one of"),
        ({**SWITCH, "reason": ""}, 400, "'reason' is required"),
        ({k: v for k, v in SWITCH.items() if k != "actor"}, 400, "'actor' is required"),
        ({**SWITCH, "scope": "scenario", "value": "no.such"}, 400, "unknown scenario 'no.such'"),
        ({**SWITCH, "scope": "global"}, 400, "a global switch takes no 'value'"),
        ({**SWITCH, "value": ""}, 400, "needs a 'value'"),
        ({**SWITCH, "expires_in": "soon"}, 400, "'expires_in'"),
        ({**SWITCH, "expires_at": "2020-01-01T00:00:00+00:00"}, 400, "in the past"),
        ([1, 2], 400, "JSON object"),
    ],
)
async def test_bad_switches_are_refused_with_the_reason(
    api: tuple[Api, FixedClock], body: Any, status: int, says: str
) -> None:
    got_status, answer = await call(api[0], "POST", "/admin/kill-switches", body)
    assert got_status == status and says in answer["error"]
    assert (await call(api[0], "GET", "/admin/kill-switches"))[1] == {"switches": []}


async def test_the_token_is_required(api: tuple[Api, FixedClock]) -> None:
    status, answer = await call(api[0], "GET", "/admin/kill-switches", token="wrong")
    assert status == 401 and "admin token" in answer["error"]


async def test_off_without_a_token(tmp_path: Path) -> None:
    gateway = Gateway(settings_for(tmp_path), metrics=fresh_metrics())
    await gateway.start()
    try:
        client = await open_api(gateway)
        status, answer = await call(client, "GET", "/admin/kill-switches", token="")
        assert status == 403 and "HERALD_ADMIN_TOKEN" in answer["error"]
        await client.channel.close()
    finally:
        await gateway.stop(grace=1.0)


async def test_scheduled_claims_are_kept_under_a_switch_and_sent_after(api: tuple[Api, FixedClock]) -> None:
    client, clock = api
    await add_user(client, "u-1")
    answer = await client.push.Push(marketing("r-1", "double11.presale"), metadata=auth("marketing"))
    assert answer.outcome == types_pb2.SCHEDULED
    status, created = await call(client, "POST", "/admin/kill-switches", {**SWITCH, "expires_in": "6h"})
    assert status == 201 and created["switch"]["expires_at"]
    clock.set(local(12, 30))
    await client.gateway.scheduler.tick()
    message = await client.push.GetMessage(
        push_pb2.GetMessageRequest(message_id=answer.message_id), metadata=auth("marketing")
    )
    assert message.status == "scheduled" and "kept" in message.timeline[-1].detail

    status, _ = await call(
        client,
        "DELETE",
        f"/admin/kill-switches/{created['switch']['id']}",
        {"actor": "ops-wang", "note": "price fixed"},
    )
    assert status == 200
    clock.set(local(12, 32))
    await client.gateway.scheduler.tick()
    await client.gateway.dispatcher.drain(5)
    message = await client.push.GetMessage(
        push_pb2.GetMessageRequest(message_id=answer.message_id), metadata=auth("marketing")
    )
    assert message.status == "delivered"
    _, audit = await call(client, "GET", "/admin/kill-switches/audit?limit=5")
    assert [e["action"] for e in audit["audit"]] == ["clear", "set"]
    assert audit["audit"][0]["note"] == "price fixed"
    status, missing = await call(client, "DELETE", "/admin/kill-switches/ks_nope", {"actor": "ops-wang"})
    assert status == 404 and "no active kill switch" in missing["error"]
