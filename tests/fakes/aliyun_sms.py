"""A fake Alibaba Cloud SMS API (dysmsapi, RPC style): checks the request signature and
answers SendSms with Alibaba's JSON shapes and codes; receipts are kept for the test
to post back to Herald."""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
import re
import secrets
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from aiohttp import web

from tests.fakes.base import FakeServer

NUMBER_RE = re.compile(r"^\d{6,15}$")


def sign(params: dict[str, str], secret: str, method: str) -> str:
    """Alibaba's RPC signature, written from the documentation independently of Herald's."""

    def enc(value: str) -> str:
        return quote(value, safe="~")

    canonical = "&".join(f"{enc(k)}={enc(params[k])}" for k in sorted(params) if k != "Signature")
    to_sign = f"{method}&{enc('/')}&{enc(canonical)}"
    digest = hmac.new(f"{secret}&".encode(), to_sign.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def _answer(code: str, message: str, status: int = 200, **extra: str) -> web.Response:
    body = {"Code": code, "Message": message, "RequestId": secrets.token_hex(8).upper(), **extra}
    return web.json_response(body, status=status)


@dataclass
class FakeAliyunSms(FakeServer):
    access_key_id: str = "LTAI_fake_key"
    access_key_secret: str = "fake-aliyun-secret"
    sends: list[dict[str, Any]] = field(default_factory=list)
    bad_numbers: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        super().__init__()
        self._biz = itertools.count(900_000_001)
        self.app.router.add_route("*", "/", self._rpc)

    async def _rpc(self, request: web.Request) -> web.Response:
        params = dict(request.query)
        if request.method == "POST":
            params.update({k: v for k, v in (await request.post()).items() if isinstance(v, str)})
        if params.get("AccessKeyId") != self.access_key_id:
            return _answer("InvalidAccessKeyId.NotFound", "Specified access key is not found.", 404)
        if params.get("Signature") != sign(params, self.access_key_secret, request.method):
            return _answer("SignatureDoesNotMatch", "Specified signature is not matched with our calculation.", 400)
        if params.get("Action") != "SendSms" or params.get("Version") != "2017-05-25":
            return _answer("InvalidAction.NotFound", "Specified api is not found", 404)
        for name in ("PhoneNumbers", "SignName", "TemplateCode"):
            if not params.get(name):
                return _answer(f"Missing{name}", f"{name} is mandatory for this action.", 400)
        if (injected := self.injected("send")) is not None:
            return _answer(injected, "injected")
        numbers = params["PhoneNumbers"].split(",")
        if any(not NUMBER_RE.match(n) or n in self.bad_numbers for n in numbers):
            return _answer("isv.MOBILE_NUMBER_ILLEGAL", "非法手机号")
        try:
            template_params = json.loads(params.get("TemplateParam") or "{}")
        except ValueError:
            return _answer("isv.INVALID_JSON_PARAM", "JSON参数不合法，只接受字符串值")
        if not isinstance(template_params, dict) or any(not isinstance(v, str) for v in template_params.values()):
            return _answer("isv.INVALID_JSON_PARAM", "JSON参数不合法，只接受字符串值")
        biz_id = f"{next(self._biz)}^0"
        self.sends.append({**params, "BizId": biz_id, "TemplateParam": template_params})
        return _answer("OK", "OK", BizId=biz_id)
