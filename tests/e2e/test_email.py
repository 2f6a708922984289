"""Email to a real SMTP server, with RFC 8058 one-click unsubscribe served by Herald."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
import yaml

from gateway.clock import FixedClock
from herald.v1 import profile_pb2, push_pb2, types_pb2
from tests.e2e.channels_setup import fakes, gateway_on_fakes, policies_for, settled
from tests.e2e.conftest import Api, auth
from tests.e2e.test_arbitration import local, marketing
from tests.e2e.test_marketing_channels import release, user
from tests.fakes.smtp import SmtpSink, smtp_server

EMAIL = "mei.lin@example.org"


@pytest.fixture
def smtp() -> Iterator[SmtpSink]:
    with smtp_server() as sink:
        yield sink


@pytest.fixture
async def api(tmp_path: Path, smtp: SmtpSink) -> AsyncIterator[tuple[Api, FixedClock]]:
    async with fakes() as fake:
        policy_dir = policies_for(tmp_path, fake)
        path = policy_dir / "channels.yaml"
        data = yaml.safe_load(path.read_text())
        data["providers"]["smtp"] = {
            "type": "smtp",
            "host": "127.0.0.1",
            "port": smtp.port,
            "tls": "none",
            "sender": "Shop <shop@example.com>",
        }
        path.write_text(yaml.safe_dump(data, allow_unicode=True))
        clock = FixedClock(local(10))
        async with gateway_on_fakes(tmp_path, fake, clock=clock, policy_dir=policy_dir) as client:
            yield client, clock


async def email_only_user(api: Api, user_id: str = "u-1") -> None:
    request = user(user_id, "oUnused0001")
    request.user.ClearField("wechat")
    request.user.ClearField("device_tokens")
    request.user.phone = ""
    request.user.email = EMAIL
    await api.profiles.UpsertUser(request, metadata=auth("order"))


def arrivals(request_id: str, user_id: str = "u-1") -> push_pb2.PushRequest:
    content = push_pb2.Content(title="New kettles", body="Twelve new kettles this week", url="https://shop.example/k")
    return marketing(request_id, "new.arrivals", content=content, user_id=user_id)


async def test_marketing_mail_carries_one_click_unsubscribe(api: tuple[Api, FixedClock], smtp: SmtpSink) -> None:
    client, clock = api
    await email_only_user(client)
    answer = await client.push.Push(arrivals("r-1"), metadata=auth("marketing"))
    assert list(answer.channel_plan) == [types_pb2.EMAIL]
    await release(client, clock, local(12, 30))
    message = await settled(client, answer.message_id, "marketing")
    assert message.status == "delivered"

    [mail] = smtp.messages
    assert mail["To"] == EMAIL and mail["Subject"] == "New kettles"
    assert mail["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    url = mail["List-Unsubscribe"].strip("<>")
    assert url.startswith(f"http://127.0.0.1:{client.gateway.public_port}/unsubscribe/")
    text = mail.get_body(("plain",))
    html = mail.get_body(("html",))
    assert text is not None and "Twelve new kettles" in text.get_content()
    assert html is not None and "<h1>New kettles</h1>" in html.get_content()

    async with aiohttp.ClientSession() as http:
        async with http.get(url) as page:  # a link scanner's GET changes nothing
            assert page.status == 200 and "<form method='post'>" in await page.text()
        got = await client.profiles.GetUser(profile_pb2.GetUserRequest(user_id="u-1"), metadata=auth("order"))
        assert list(got.opt_outs) == []
        tampered = url[:-3] + ("AAA" if not url.endswith("AAA") else "BBB")
        async with http.post(tampered, data="List-Unsubscribe=One-Click") as refused:
            assert refused.status == 400 and "not valid" in await refused.text()
        async with http.post(
            url, data="List-Unsubscribe=One-Click", headers={"Content-Type": "application/x-www-form-urlencoded"}
        ) as done:
            assert done.status == 200

    got = await client.profiles.GetUser(profile_pb2.GetUserRequest(user_id="u-1"), metadata=auth("order"))
    [opt_out] = got.opt_outs
    assert (opt_out.category, opt_out.channel, opt_out.source) == (
        types_pb2.MARKETING,
        types_pb2.EMAIL,
        "email-one-click",
    )
    again = await client.push.Push(arrivals("r-2"), metadata=auth("marketing"))
    assert again.outcome == types_pb2.SUPPRESSED and again.reason == types_pb2.OPTED_OUT


async def test_unknown_mailbox_is_cleared(api: tuple[Api, FixedClock], smtp: SmtpSink) -> None:
    client, clock = api
    await email_only_user(client)
    smtp.unknown.add(EMAIL)
    answer = await client.push.Push(arrivals("r-1"), metadata=auth("marketing"))
    await release(client, clock, local(12, 30))
    message = await settled(client, answer.message_id, "marketing")
    assert message.status == "failed"
    assert any(e.kind == "attempt" and e.provider_code.startswith("550") for e in message.timeline)
    got = await client.profiles.GetUser(profile_pb2.GetUserRequest(user_id="u-1"), metadata=auth("order"))
    assert got.email == ""
    assert smtp.messages == []


async def test_one_click_unsubscribes_count_towards_the_campaigns_auto_stop(tmp_path: Path, smtp: SmtpSink) -> None:
    async with fakes() as fake:
        policy_dir = policies_for(tmp_path, fake)
        path = policy_dir / "channels.yaml"
        data = yaml.safe_load(path.read_text())
        data["providers"]["smtp"] = {
            "type": "smtp",
            "host": "127.0.0.1",
            "port": smtp.port,
            "tls": "none",
            "sender": "s@x.io",
        }
        path.write_text(yaml.safe_dump(data, allow_unicode=True))
        defaults = policy_dir / "defaults.yaml"
        defaults.write_text(
            defaults.read_text().replace(
                "auto_stop: {last: 200, min_sends: 50, threshold: 0.05}",
                "auto_stop: {last: 20, min_sends: 5, threshold: 0.3}",
            )
        )
        clock = FixedClock(local(10))
        async with gateway_on_fakes(tmp_path, fake, clock=clock, policy_dir=policy_dir) as client:
            answers = []
            for index in range(4):
                await email_only_user(client, f"u-{index}")
                answers.append(await client.push.Push(arrivals(f"r-{index}", f"u-{index}"), metadata=auth("marketing")))
            await release(client, clock, local(12, 30))
            for answer in answers:
                assert (await settled(client, answer.message_id, "marketing")).status == "delivered"
            links = [mail["List-Unsubscribe"].strip("<>") for mail in smtp.messages]
            async with aiohttp.ClientSession() as http:
                for url in links[:2]:  # two of four recipients unsubscribe: 2 of 6 outcomes
                    async with http.post(url, data="List-Unsubscribe=One-Click") as done:
                        assert done.status == 200
            [switch] = client.gateway.switches.current()
            assert (switch.scope.value, switch.value) == ("campaign", "c-new.arrivals")
            assert "2 of the last 6 sends of campaign 'c-new.arrivals'" in switch.reason
