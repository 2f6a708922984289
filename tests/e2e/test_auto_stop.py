"""Auto-stop: when WeChat reports `failed:user block` for a rising share of a
scenario's users, Herald stops that scenario itself at the policy's threshold; a
campaign is stopped by its own figures only (one-click unsubscribes feed the same
window: tests/e2e/test_email.py)."""

from __future__ import annotations

from pathlib import Path

import yaml

from gateway.clock import FixedClock
from gateway.values.records import ScopeKind
from herald.v1 import profile_pb2, push_pb2, types_pb2
from tests.e2e.channels_setup import CALLBACK_TOKEN, Fakes, gateway_on_fakes, policies_for, settled
from tests.e2e.conftest import auth
from tests.e2e.test_arbitration import local

LAST, MIN_SENDS, THRESHOLD = 30, 15, 0.2


def reminder_on_templates(policy_dir: Path) -> None:
    """The test's own reminder that goes out as a template message (reminders may)."""
    path = policy_dir / "scenarios" / "reminder.yaml"
    data = yaml.safe_load(path.read_text())
    data["scenarios"]["price.drop"]["channels"] = ["WECHAT_TEMPLATE"]
    data["scenarios"]["price.drop"]["content"] = {
        "wechat_template": {
            "template_id": "TPL_PRICE_DROP_01",
            "fields": {"first": "降价提醒", "keyword1": "{item_name}", "keyword2": "¥{new_price}"},
        }
    }
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    defaults = policy_dir / "defaults.yaml"
    text = defaults.read_text().replace(
        "auto_stop: {last: 200, min_sends: 50, threshold: 0.05}",
        f"auto_stop: {{last: {LAST}, min_sends: {MIN_SENDS}, threshold: {THRESHOLD}}}",
    )
    defaults.write_text(text)


async def test_rising_user_blocks_trip_auto_stop_at_the_threshold(tmp_path: Path, fake: Fakes) -> None:
    policy_dir = policies_for(tmp_path, fake)
    reminder_on_templates(policy_dir)
    async with gateway_on_fakes(tmp_path, fake, clock=FixedClock(local(10)), policy_dir=policy_dir) as api:
        gateway = api.gateway
        callback = f"http://127.0.0.1:{gateway.public_port}/webhooks/wechat"
        # What the window holds, in the order the gateway records it: a good outcome per
        # send, a bad one per `failed:user block` report.
        window: list[bool] = []
        blocked: set[str] = set()
        tripped_at = None
        for wave in range(8):
            users = [f"u-{wave}-{i}" for i in range(10)]
            for user_id in users:
                openid = f"oStop{wave}{user_id[-1]}xyzw"
                await api.profiles.UpsertUser(
                    profile_pb2.UpsertUserRequest(
                        user=profile_pb2.User(
                            user_id=user_id, wechat=profile_pb2.WeChatIdentity(openid=openid, following=True)
                        )
                    ),
                    metadata=auth("order"),
                )
                if int(user_id[-1]) < wave:  # wave k: k of its 10 users block the account
                    blocked.add(openid)
            answers = [
                await api.push.Push(
                    push_pb2.PushRequest(
                        request_id=f"r-{u}",
                        user_id=u,
                        scenario="price.drop",
                        params={"item_name": "kettle", "new_price": "99"},
                    ),
                    metadata=auth("growth"),
                )
                for u in users
            ]
            if tripped_at is not None:
                assert {a.reason for a in answers} == {types_pb2.KILL_SWITCH}
                break
            for answer in answers:
                assert (await settled(api, answer.message_id, "growth")).status == "delivered"
            window += [False] * len(users)
            reported_before = fake.wechat._reported
            await fake.wechat.post_job_reports(callback, CALLBACK_TOKEN, blocked)
            for send in fake.wechat.template_sends[reported_before:]:
                if send["touser"] in blocked:
                    window.append(True)
                    recent = window[-LAST:]
                    if tripped_at is None and len(recent) >= MIN_SENDS and sum(recent) / len(recent) >= THRESHOLD:
                        tripped_at = (wave, sum(recent), len(recent))
            stopped = [s for s in gateway.switches.current() if s.scope is ScopeKind.SCENARIO]
            assert bool(stopped) == (tripped_at is not None), (wave, sum(window[-LAST:]))
        assert tripped_at is not None, "the share of blocks never reached the threshold"
        [switch] = [s for s in gateway.switches.current() if s.scope is ScopeKind.SCENARIO]
        assert switch.value == "price.drop" and switch.actor == "herald auto-stop"
        _, bad, total = tripped_at
        assert f"{bad} of the last {total} sends" in switch.reason and "threshold 20.0%" in switch.reason
        assert gateway.metrics.registry.get_sample_value("herald_auto_stops_total", {"scope": "scenario"}) == 1


async def test_a_campaign_is_stopped_by_its_own_figures_only(tmp_path: Path) -> None:
    from gateway.autostop import AutoStop
    from gateway.killswitches import KillSwitches
    from gateway.metrics import fresh_metrics
    from gateway.policy.holder import PolicyHolder
    from gateway.store.memory import MemoryStore
    from gateway.values.domain import Category
    from tests.conftest import POLICIES

    clock = FixedClock(local(10))
    store, metrics = MemoryStore(clock), fresh_metrics()
    switches = KillSwitches(store, clock, metrics)
    auto = AutoStop(store, switches, PolicyHolder(POLICIES, metrics), metrics)  # last 200, min 50, 5%
    for i in range(60):
        await auto.record_for(Category.MARKETING, "double11.presale", "d11-a", bad=i % 10 == 0)  # 10%
        await auto.record_for(Category.MARKETING, "double11.presale", "d11-b", bad=False)
        await auto.record_for(Category.BASIC, "order.shipped", "", bad=True)  # basic is never auto-stopped
        if i < 49:
            assert switches.current() == []
    [switch] = switches.current()
    assert (switch.scope, switch.value) == (ScopeKind.CAMPAIGN, "d11-a")
    assert "5 of the last 50 sends of campaign 'd11-a'" in switch.reason
