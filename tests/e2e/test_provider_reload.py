"""What is sent is what was configured: a hot reload rebuilds the provider adapters from
the new policy (a new provider, a changed base_url or sign_name, new webhook settings),
a set whose providers cannot be built is refused, and the sandbox serves only when it
is allowed."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import aiohttp
import pytest
import yaml

from gateway.app import Gateway
from gateway.config import Settings
from gateway.errors import PolicyError
from gateway.metrics import fresh_metrics
from herald.v1 import push_pb2
from tests.e2e.channels_setup import Fakes, gateway_on_fakes, policies_for, settled
from tests.e2e.conftest import Api, auth, open_api, settings_for
from tests.fakes.aliyun_sms import FakeAliyunSms

SECOND_TOKEN = "second-callback-token"


def security(request_id: str, user_id: str = "u-sms") -> push_pb2.PushRequest:
    # account.security goes SMS first.
    return push_pb2.PushRequest(
        request_id=request_id, user_id=user_id, scenario="account.security", params={"event": "login", "device": "pc"}
    )


def edit_channels(policy_dir: Path, edit: object) -> None:
    path = policy_dir / "channels.yaml"
    data = yaml.safe_load(path.read_text())
    edit(data)  # type: ignore[operator]
    path.write_text(yaml.safe_dump(data, allow_unicode=True))


async def sms_user(api: Api) -> None:
    await api.add_user("u-sms", phone="+8613800138000")


async def test_a_new_provider_a_new_base_url_and_a_new_sign_name_serve_after_a_reload(
    tmp_path: Path, fake: Fakes
) -> None:
    second = FakeAliyunSms()
    await second.start()
    policy_dir = policies_for(tmp_path, fake)
    try:
        async with gateway_on_fakes(tmp_path, fake, policy_dir=policy_dir) as api:
            await sms_user(api)
            first = await api.push.Push(security("r-1"), metadata=auth("order"))
            assert (await settled(api, first.message_id)).status == "delivered"
            assert [s["SignName"] for s in fake.sms.sends] == ["示例商城"]

            # SMS through a new provider (its credentials are set) at the second fake.
            def new_provider(data: dict) -> None:  # type: ignore[type-arg]
                data["providers"]["aliyun_b"] = {
                    **data["providers"]["aliyun_sms"],
                    "base_url": second.url,
                    "sign_name": "新签名",
                }
                data["channels"]["SMS"]["provider"] = "aliyun_b"

            edit_channels(policy_dir, new_provider)
            api.gateway.reload()
            again = await api.push.Push(security("r-2"), metadata=auth("order"))
            message = await settled(api, again.message_id)
            assert message.status == "delivered"
            assert "SANDBOX" not in [e.provider_code for e in message.timeline]
            assert [s["SignName"] for s in second.sends] == ["新签名"]
            assert len(fake.sms.sends) == 1

            # The same provider with its base_url edited back to the first fake.
            edit_channels(policy_dir, lambda data: data["providers"]["aliyun_b"].update(base_url=fake.sms.url))
            api.gateway.reload()
            third = await api.push.Push(security("r-3"), metadata=auth("order"))
            assert (await settled(api, third.message_id)).status == "delivered"
            assert [s["SignName"] for s in fake.sms.sends] == ["示例商城", "新签名"]
            assert len(second.sends) == 1
    finally:
        await second.stop()


async def test_an_unchanged_provider_keeps_its_adapter(tmp_path: Path, fake: Fakes) -> None:
    policy_dir = policies_for(tmp_path, fake)
    async with gateway_on_fakes(tmp_path, fake, policy_dir=policy_dir) as api:
        before = api.gateway.providers.adapters["wechat"]
        edit_channels(policy_dir, lambda data: data["providers"]["aliyun_sms"].update(sign_name="另一个"))
        api.gateway.reload()
        assert api.gateway.providers.adapters["wechat"] is before  # its token and batches stay
        assert api.gateway.providers.adapters["aliyun_sms"] is not before


def signed(token: str) -> dict[str, str]:
    timestamp, nonce = str(int(time.time())), "n1"
    signature = hashlib.sha1("".join(sorted([token, timestamp, nonce])).encode()).hexdigest()
    return {"signature": signature, "timestamp": timestamp, "nonce": nonce, "echostr": "hello"}


async def test_webhook_settings_follow_a_reload(tmp_path: Path, fake: Fakes) -> None:
    policy_dir = policies_for(tmp_path, fake)
    environ = {**fake.environ(), "HERALD_WECHAT_CALLBACK_TOKEN_2": SECOND_TOKEN}
    gateway = Gateway(settings_for(tmp_path, "", policy_dir), metrics=fresh_metrics(), environ=environ)
    await gateway.start()
    try:
        url = f"http://127.0.0.1:{gateway.public_port}/webhooks/wechat"
        async with aiohttp.ClientSession() as http:
            async with http.get(url, params=signed(SECOND_TOKEN)) as answer:
                assert answer.status == 403
            edit_channels(
                policy_dir,
                lambda data: data["providers"]["wechat"].update(callback_token_env="HERALD_WECHAT_CALLBACK_TOKEN_2"),
            )
            gateway.reload()
            async with http.get(url, params=signed(SECOND_TOKEN)) as answer:
                assert answer.status == 200 and await answer.text() == "hello"
    finally:
        await gateway.stop(grace=1.0)


def without_sandbox(tmp_path: Path, policy_dir: Path) -> Settings:
    settings = settings_for(tmp_path, "", policy_dir)
    return settings.replace(sandbox=False)


async def test_without_the_sandbox_missing_credentials_refuse_start_and_reload(tmp_path: Path, fake: Fakes) -> None:
    policy_dir = policies_for(tmp_path, fake)
    # The SMTP provider's username and password are not in the environment.
    with pytest.raises(PolicyError) as info:
        Gateway(without_sandbox(tmp_path, policy_dir), metrics=fresh_metrics(), environ=fake.environ())
    assert "HERALD_SMTP_USERNAME is not set" in str(info.value)

    edit_channels(policy_dir, lambda data: data["providers"].update(smtp={"type": "sandbox"}))
    gateway = Gateway(without_sandbox(tmp_path, policy_dir), metrics=fresh_metrics(), environ=fake.environ())
    await gateway.start()
    api = await open_api(gateway)
    try:
        serving = gateway.policies.current.version
        edit_channels(policy_dir, lambda data: data["providers"]["aliyun_sms"].update(access_key_id_env="HERALD_NOPE"))
        gateway.reload()
        assert gateway.policies.current.version == serving
        assert "HERALD_NOPE is not set" in (gateway.policies.last_error or "")
        await sms_user(api)
        answer = await api.push.Push(security("r-1"), metadata=auth("order"))
        assert (await settled(api, answer.message_id)).status == "delivered"
        assert len(fake.sms.sends) == 1  # still the real provider
    finally:
        await api.channel.close()
        await gateway.stop(grace=1.0)
