"""A gateway wired to the fake providers: a copy of the sample policies pointing each
provider at its fake, and the credentials in the gateway's environment."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import yaml

from gateway.app import Gateway
from gateway.clock import Clock
from gateway.metrics import fresh_metrics
from herald.v1 import push_pb2
from tests.conftest import POLICIES
from tests.e2e.conftest import Api, auth, open_api, settings_for
from tests.fakes.aliyun_sms import FakeAliyunSms
from tests.fakes.push import FakeFcm, FakeJpush
from tests.fakes.wechat import FakeWechat

CALLBACK_TOKEN = "callback-token"
AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"  # 43 characters, as WeChat issues


@dataclass
class Fakes:
    wechat: FakeWechat
    sms: FakeAliyunSms
    fcm: FakeFcm
    jpush: FakeJpush
    service_account: Path

    def environ(self) -> dict[str, str]:
        return {
            "HERALD_WECHAT_APPID": self.wechat.appid,
            "HERALD_WECHAT_SECRET": self.wechat.secret,
            "HERALD_WECHAT_CALLBACK_TOKEN": CALLBACK_TOKEN,
            "HERALD_WECHAT_AES_KEY": AES_KEY,
            "HERALD_ALIYUN_ACCESS_KEY_ID": self.sms.access_key_id,
            "HERALD_ALIYUN_ACCESS_KEY_SECRET": self.sms.access_key_secret,
            "HERALD_FCM_SERVICE_ACCOUNT_FILE": str(self.service_account),
            "HERALD_JPUSH_APP_KEY": self.jpush.app_key,
            "HERALD_JPUSH_MASTER_SECRET": self.jpush.master_secret,
        }


@asynccontextmanager
async def fakes() -> AsyncIterator[Fakes]:
    wechat, sms, fcm, jpush = FakeWechat(), FakeAliyunSms(), FakeFcm(), FakeJpush()
    for server in (wechat, sms, fcm, jpush):
        await server.start()
    with tempfile.TemporaryDirectory(prefix="herald-fakes-") as tmp:
        key_file = Path(tmp) / "service-account.json"
        key_file.write_bytes(fcm.service_account())
        try:
            yield Fakes(wechat, sms, fcm, jpush, key_file)
        finally:
            for server in (wechat, sms, fcm, jpush):
                await server.stop()


def policies_for(tmp_path: Path, fake: Fakes, edit_categories: dict[str, str] | None = None, **wechat: object) -> Path:
    """The sample policies with the providers pointed at the fakes; quick breakers and
    mass-send batches so tests do not wait."""
    target = tmp_path / "policies"
    shutil.copytree(POLICIES, target)
    path = target / "channels.yaml"
    data = yaml.safe_load(path.read_text())
    data["providers"]["wechat"].update(
        {"base_url": fake.wechat.url, "mass_batch_wait": 0.3, "breaker_faults": 2, "breaker_cool_down": 1.0, **wechat}
    )
    data["providers"]["aliyun_sms"]["base_url"] = fake.sms.url
    data["providers"]["fcm"]["base_url"] = fake.fcm.url
    data["providers"]["jpush"]["base_url"] = fake.jpush.url
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    categories = target / "categories.yaml"
    text = categories.read_text()
    for old, new in (edit_categories or {}).items():
        assert old in text
        text = text.replace(old, new)
    categories.write_text(text)
    return target


@asynccontextmanager
async def gateway_on_fakes(
    tmp_path: Path, fake: Fakes, redis_url: str = "", clock: Clock | None = None, policy_dir: Path | None = None
) -> AsyncIterator[Api]:
    settings = settings_for(tmp_path, redis_url, policy_dir or policies_for(tmp_path, fake))
    gateway = Gateway(settings, metrics=fresh_metrics(), environ=fake.environ(), clock=clock)
    await gateway.start()
    api = await open_api(gateway)
    try:
        yield api
    finally:
        await api.channel.close()
        await gateway.stop(grace=2.0)


async def settled(api: Api, message_id: str, bu: str = "order", within: float = 15.0) -> push_pb2.Message:
    """The message once delivery finished (delivered, failed, suppressed, expired)."""
    import asyncio

    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        message = await api.push.GetMessage(push_pb2.GetMessageRequest(message_id=message_id), metadata=auth(bu))
        if message.status in ("delivered", "failed", "suppressed", "expired"):
            return message
        if loop.time() > deadline:
            raise AssertionError(f"{message_id} still {message.status} after {within}s")
        await asyncio.sleep(0.02)


def now_utc() -> datetime:
    return datetime.now(UTC)
