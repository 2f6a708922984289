"""/metrics after a scripted run of traffic: each counter at the value the traffic
implies (scraped over HTTP and parsed as Prometheus would)."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.app import Gateway
from gateway.metrics import fresh_metrics
from herald.v1 import profile_pb2, push_pb2, types_pb2
from tests.e2e.channels_setup import fakes, policies_for, settled
from tests.e2e.conftest import OPENID, auth, open_api, settings_for
from tests.e2e.test_push import shipped

ADMIN = "metrics-test-admin-token"


def order(n: int) -> dict[str, str]:
    return {"order_id": f"O-{n}", "carrier": "SF", "tracking_no": f"T{n}"}


async def test_counters_match_the_traffic(tmp_path: Path) -> None:
    async with fakes() as fake:
        settings = settings_for(tmp_path, policy_dir=policies_for(tmp_path, fake)).replace(admin_token=ADMIN)
        gateway = Gateway(settings, metrics=fresh_metrics(), environ=fake.environ())
        await gateway.start()
        api = await open_api(gateway)
        admin = f"http://127.0.0.1:{gateway.admin_port}"
        try:
            await api.add_follower("u-1")
            await api.add_user(
                "u-2",
                wechat=profile_pb2.WeChatIdentity(openid="oGone0000000000000000000000x", following=True),
                phone="+8613900139000",
            )
            fake.wechat.unfollowed.add("oGone0000000000000000000000x")
            # 3 template deliveries, 1 that falls back to SMS, 1 duplicate, 1 refused
            ids = []
            for n in range(3):
                answer = await api.push.Push(
                    shipped(f"r-{n}", params=order(n), dedup_key=f"O-{n}"), metadata=auth("order")
                )
                ids.append(answer.message_id)
            ids.append((await api.push.Push(shipped("r-3", "u-2", params=order(3)), metadata=auth("order"))).message_id)
            duplicate = await api.push.Push(shipped("r-4", params=order(0), dedup_key="O-0"), metadata=auth("order"))
            assert duplicate.reason == types_pb2.DUPLICATE
            with pytest.raises(grpc.aio.AioRpcError):
                await api.push.Push(
                    push_pb2.PushRequest(request_id="r-5", user_id="u-1", scenario="no.such"), metadata=auth("order")
                )
            for message_id in ids:
                assert (await settled(api, message_id)).status == "delivered"
            # a kill switch, and the request it stops
            async with aiohttp.ClientSession() as http:
                body = {"scope": "scenario", "value": "order.shipped", "reason": "test", "actor": "qa"}
                async with http.post(
                    f"{admin}/admin/kill-switches", json=body, headers={"Authorization": f"Bearer {ADMIN}"}
                ) as created:
                    assert created.status == 201
                killed = await api.push.Push(shipped("r-6", params=order(6)), metadata=auth("order"))
                assert killed.reason == types_pb2.KILL_SWITCH
                async with http.get(f"{admin}/metrics") as page:
                    text = await page.text()
        finally:
            await api.channel.close()
            await gateway.stop(grace=1.0)

    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }

    def value(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted(labels.items())))]

    decided = {"bu": "order", "category": "basic"}
    assert value("herald_decisions_total", **decided, outcome="ACCEPTED", reason="") == 4
    assert value("herald_decisions_total", **decided, outcome="SUPPRESSED", reason="DUPLICATE") == 1
    assert value("herald_decisions_total", **decided, outcome="SUPPRESSED", reason="KILL_SWITCH") == 1
    assert value("herald_decisions_total", **decided, outcome="SUPPRESSED", reason="QUIET_HOURS") == 0
    assert value("herald_decision_seconds_count", method="Push") == 7  # the refused one too
    assert sum(v for (n, _), v in samples.items() if n == "herald_requests_refused_total") == 1
    assert value("herald_sends_total", channel="WECHAT_TEMPLATE", provider="wechat", result="delivered") == 3
    assert value("herald_sends_total", channel="WECHAT_TEMPLATE", provider="wechat", result="fallback") == 1
    assert value("herald_sends_total", channel="SMS", provider="aliyun_sms", result="delivered") == 1
    assert value("herald_fallbacks_total", **{"from": "WECHAT_TEMPLATE", "to": "SMS"}) == 1
    assert value("herald_fallbacks_total", **{"from": "SMS", "to": "EMAIL"}) == 0  # primed: zero, not absent
    assert value("herald_user_updates_total", fact="unfollowed") == 1
    assert value("herald_send_seconds_count", channel="WECHAT_TEMPLATE") == 4
    assert value("herald_dead_letters_total", channel="WECHAT_TEMPLATE") == 0
    assert value("herald_retries_total", channel="WECHAT_TEMPLATE") == 0
    assert value("herald_kill_switches_active", scope="scenario") == 1
    assert value("herald_breaker_state", provider="wechat") == 0
    assert value("herald_auto_stops_total", scope="campaign") == 0
    assert sum(v for (n, labels), v in samples.items() if n == "herald_policy_info") == 1
    assert OPENID not in text and "13900139000" not in text  # never a label
