"""Provider settings in policy. Secrets are named by environment variable, never inline.

Product teams edit policy files and commit them; keys and passwords live in the
deployment's environment. A key that looks like a secret written inline (``secret:``,
``password:``, ...) is refused with the name of the ``*_env`` key to use instead.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

_SECRETISH = re.compile(r"(secret|password|passwd|token|api_?key|private_?key|aes_?key)$")
ENV_NAME = r"^[A-Z_][A-Z0-9_]*$"


class _Provider(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # Sends a second to this provider, shared by every replica (a token bucket in the
    # store); None: no limit of ours.
    rate: float | None = Field(default=None, gt=0)
    burst: int | None = Field(default=None, ge=1)
    # Sends in flight to this provider from one process at a time.
    concurrency: int = Field(default=64, ge=1, le=10_000)
    # Breaker: provider faults in a row that open it, and seconds until a probe.
    breaker_faults: int = Field(default=5, ge=1)
    breaker_cool_down: float = Field(default=30.0, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _no_inline_secrets(cls, value: Any) -> Any:
        if isinstance(value, dict):
            for key in value:
                if isinstance(key, str) and _SECRETISH.search(key) and not key.endswith("_env"):
                    raise ValueError(
                        f"'{key}' looks like a secret written inline; secrets are never kept in "
                        f"policy files: set '{key}_env' to the name of an environment variable"
                    )
        return value


EnvName = Annotated[str, Field(pattern=ENV_NAME)]


class SandboxProvider(_Provider):
    """Writes would-be deliveries to the outbox in the data directory."""

    type: Literal["sandbox"]


class WechatProvider(_Provider):
    type: Literal["wechat"]
    appid_env: EnvName
    secret_env: EnvName
    callback_token_env: EnvName | None = None
    encoding_aes_key_env: EnvName | None = None
    base_url: str = "https://api.weixin.qq.com"
    # Mass send: how long to collect a campaign's users before one call (or 10,000).
    mass_batch_wait: float = Field(default=2.0, gt=0, le=60)


class AliyunSmsProvider(_Provider):
    type: Literal["aliyun_sms"]
    access_key_id_env: EnvName
    access_key_secret_env: EnvName
    sign_name: str
    base_url: str = "https://dysmsapi.aliyuncs.com"
    # Receipts are posted to /webhooks/aliyun-sms?token=<this value>; unset: no check.
    receipt_token_env: EnvName | None = None


class SmtpProvider(_Provider):
    type: Literal["smtp"]
    host: str
    port: int = Field(default=587, ge=1, le=65535)
    tls: Literal["starttls", "implicit", "none"] = "starttls"
    username_env: EnvName | None = None
    password_env: EnvName | None = None
    sender: str


class FcmProvider(_Provider):
    type: Literal["fcm"]
    project_id: str
    service_account_file_env: EnvName
    base_url: str = "https://fcm.googleapis.com"


class JpushProvider(_Provider):
    type: Literal["jpush"]
    app_key_env: EnvName
    master_secret_env: EnvName
    base_url: str = "https://api.jpush.cn"


Provider = Annotated[
    SandboxProvider | WechatProvider | AliyunSmsProvider | SmtpProvider | FcmProvider | JpushProvider,
    Field(discriminator="type"),
]
