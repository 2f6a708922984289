"""herald preview: what each channel of a scenario would send, with the request's and
the providers' checks, from the policy folder alone (no gateway, nothing sent)."""

from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path

import pytest

from channels.checks import content_findings
from gateway.cli.main import main
from gateway.values.domain import Channel
from tests.conftest import POLICIES, ROOT

SHIPPED = ["-p", "order_id=O-1", "-p", "carrier=SF", "-p", "tracking_no=SF1"]


def preview(capsys: pytest.CaptureFixture[str], *args: str, policies: Path = POLICIES) -> tuple[int, str, str]:
    code = main(["preview", "--policy-dir", str(policies), *args])
    out, err = capsys.readouterr()
    return code, out, err


def as_json(capsys: pytest.CaptureFixture[str], *args: str, policies: Path = POLICIES) -> tuple[int, dict]:  # type: ignore[type-arg]
    code, out, _ = preview(capsys, *args, "--json", policies=policies)
    return code, json.loads(out)


def test_every_channel_rendered_in_the_users_locale(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = preview(capsys, "-s", "order.shipped", *SHIPPED, "--locale", "en-GB")
    assert code == 0
    assert out.startswith("order.shipped (basic), policy ")
    assert "locale en-GB: content locales.en" in out
    assert "APP_PUSH  via fcm  (locales.en content)\n  title  Your order is on its way\n  body   SF SF1" in out
    # No English WeChat template: the default one.
    assert "WECHAT_TEMPLATE  via wechat  (default content)" in out and "fields.character_string1  O-1" in out
    assert "template_code    SMS_100012" in out
    assert "sign_name        示例商城" in out  # the provider's, since the block names none
    assert out.rstrip().endswith("nothing sent: 0 error(s), 0 warning(s)")


def test_json_has_each_channels_payload_and_findings(capsys: pytest.CaptureFixture[str]) -> None:
    code, shown = as_json(capsys, "-s", "order.shipped", *SHIPPED, "--channel", "APP_PUSH", "--channel", "SMS")
    assert code == 0
    assert shown["locale"] == "" and shown["content_locale"] is None and shown["request"] == []
    assert [c["channel"] for c in shown["channels"]] == ["APP_PUSH", "SMS"]
    push, sms = shown["channels"]
    assert push["payload"] == {"title": "订单已发货", "body": "SF SF1", "url": "shop://orders/O-1"}
    assert sms["payload"]["params"] == {"order": "O-1", "carrier": "SF", "tracking": "SF1"}
    assert sms["findings"] == [
        {"level": "note", "where": "sign_name", "text": "provider aliyun_sms's (the block names none)"}
    ]
    assert shown["errors"] == 0 and shown["warnings"] == 0


def test_what_the_providers_would_refuse(capsys: pytest.CaptureFixture[str]) -> None:
    carrier = "顺丰速运" * 6  # 24 characters
    tracking = "T" * 36
    code, shown = as_json(
        capsys, "-s", "order.shipped", "-p", "order_id=O-1", "-p", f"carrier={carrier}", "-p", f"tracking_no={tracking}"
    )
    assert code == 1 and shown["errors"] == 3
    findings = {(c["channel"], f["where"]): f for c in shown["channels"] for f in c["findings"]}
    assert findings["WECHAT_TEMPLATE", "fields.thing2"]["text"] == (
        "is 24 characters; WeChat takes at most 20 in a thing field (47003)"
    )
    assert findings["WECHAT_TEMPLATE", "fields.character_string3"]["text"] == (
        "is 36 characters; WeChat takes at most 32 in a character_string field (47003)"
    )
    assert findings["SMS", "params.tracking"]["text"].startswith("is 36 characters; Alibaba Cloud SMS takes at most 35")


def test_what_push_would_refuse(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = preview(capsys, "-s", "order.shipped", "-p", "order_id=O-1")
    assert code == 1
    assert "error  params: Push would refuse the request: scenario 'order.shipped' needs carrier, tracking_no" in out
    assert re.search(r"^  fields\.thing2 +\(empty\)$", out, flags=re.M)  # rendered all the same

    code, out, _ = preview(capsys, "-s", "order.shipped", *SHIPPED, "--body", "hello")
    assert code == 1 and "content: Push would refuse the request: scenario 'order.shipped' takes no free text" in out

    code, out, _ = preview(
        capsys, "-s", "account.security", "-p", "event=login", "-p", "device=pc", "--body", "a coupon for you"
    )
    assert code == 1 and "content.body: Push would refuse the request: reads as marketing ('coupon')" in out


def test_a_line_break_in_an_email_subject(capsys: pytest.CaptureFixture[str]) -> None:
    code, shown = as_json(
        capsys, "-s", "account.security", "-p", "event=login\nBcc: x@example.com", "-p", "device=pc", "--locale", "en"
    )
    assert code == 1
    email = next(c for c in shown["channels"] if c["channel"] == "EMAIL")
    assert email["content_locale"] == "en"
    assert email["findings"][0]["where"] == "subject" and "line break" in email["findings"][0]["text"]


def test_guard_words_a_template_brings_into_a_basic_message(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    shutil.copytree(POLICIES, policies)
    path = policies / "scenarios" / "basic.yaml"
    code, shown = as_json(
        capsys, "-s", "order.paid", "-p", "order_id=O-1", "-p", "amount=99", "--channel", "WECHAT_TEMPLATE",
        policies=policies,
    )  # fmt: skip
    assert code == 0 and shown["channels"][0]["findings"] == []
    path.write_text(path.read_text().replace('amount2: "¥{amount}"', 'amount2: "¥{amount} 优惠"'))
    code, shown = as_json(
        capsys, "-s", "order.paid", "-p", "order_id=O-1", "-p", "amount=99", "--channel", "WECHAT_TEMPLATE",
        policies=policies,
    )  # fmt: skip
    assert code == 0  # Push takes it: the warning is for the policy's author
    found = [f for f in shown["channels"][0]["findings"] if f["where"] == "fields.amount2"]
    assert found[0]["level"] == "warning" and found[0]["text"].startswith("reads as marketing ('优惠')")
    assert "WeChat blocks the template interface" in found[0]["text"]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["-s", "order.shiped", *SHIPPED], "no scenario 'order.shiped'"),
        (["-s", "order.shipped", *SHIPPED, "--channel", "EMAIL"], "order.shipped does not send on EMAIL"),
        (["-s", "order.shipped", "-p", "order_id"], "--param 'order_id' must be NAME=VALUE"),
        (["-s", "order.shipped", *SHIPPED, "--locale", "english"], "'english' is not a locale tag"),
    ],
)
def test_usage_errors(capsys: pytest.CaptureFixture[str], args: list[str], says: str) -> None:
    code, _, err = preview(capsys, *args)
    assert code == 2 and says in err


def test_nothing_is_sent_and_no_gateway_is_needed(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    before = set(tmp_path.iterdir())
    code, _, _ = preview(capsys, "-s", "double11.presale", "-p", "deposit=50", "-p", "discount=100")
    assert code == 0 and set(tmp_path.iterdir()) == before


@pytest.mark.parametrize(
    ("key", "value", "level"),
    [
        ("keyword1", "x" * 20, None),
        ("keyword1", "x" * 21, "error"),
        ("thing1", "x" * 21, "error"),
        ("character_string2", "x" * 32, None),
        ("character_string2", "x" * 33, "error"),
        ("phrase3", "已发货", None),
        ("phrase3", "已经发货了啊", "error"),
        ("time4", "2026年11月11日 08:00", None),  # no length rule of ours for the other types
        ("keyword1", "two\nlines", "error"),
        ("first", "hello", "warning"),
        ("keyword1", "", "warning"),
    ],
)
def test_wechat_template_field_rules(key: str, value: str, level: str | None) -> None:
    found = content_findings(Channel.WECHAT_TEMPLATE, {"template_id": "T", "fields": {key: value}})
    assert [f.level for f in found] == ([level] if level else [])


def test_push_size() -> None:
    assert content_findings(Channel.APP_PUSH, {"title": "t", "body": "x" * 3990}) == []
    found = content_findings(Channel.APP_PUSH, {"title": "t", "body": "好" * 1400})  # 4,200 bytes
    assert [(f.level, f.where) for f in found] == [("error", "body")]


def test_the_readme_shows_what_the_command_prints(capsys: pytest.CaptureFixture[str]) -> None:
    """The README's preview example and the output printed under it agree (but the
    policy version, which any change of the sample changes)."""
    readme = (ROOT / "README.md").read_text()
    command, printed = re.search(
        r"```sh\n\.venv/bin/herald preview (.*?)\n```\n.*?```\n(order\.shipped .*?)```", readme, flags=re.S
    ).groups()  # type: ignore[union-attr]
    code, out, _ = preview(capsys, *shlex.split(command))
    assert code == 0
    version = re.compile(r"policy [0-9a-f]{12}")
    assert version.sub("policy V", out) == version.sub("policy V", printed)


def test_preview_opens_no_connection_and_writes_no_outbox(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing is sent: no socket is opened (no gateway, no provider, no store), and the
    data folder (where the sandbox writes) stays empty."""
    import socket

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("preview opened a connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setenv("HERALD_DATA_DIR", str(tmp_path))
    code, out, _ = preview(capsys, "-s", "double11.presale", "-p", "deposit=50", "-p", "discount=100")
    assert code == 0 and "nothing sent" in out and list(tmp_path.iterdir()) == []
