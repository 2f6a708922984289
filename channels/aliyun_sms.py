"""Alibaba Cloud SMS (``SendSms``, RPC style, HMAC-SHA1 request signature).

Alibaba has no idempotency key: after a timeout the message may or may not have gone
out, so a timeout is not resent (the attempt ends as ``unknown``; the delivery receipt
tells later). A refused connection surely sent nothing and is retried.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from urllib.parse import quote

import orjson

from channels.base import Delivery, SendResult, SendStatus, UserFact
from channels.http import Http, Unreachable, server_fault

RETRY = frozenset({"isp.SYSTEM_ERROR", "Throttling.User", "Throttling", "ServiceUnavailable"})
THROTTLED = frozenset({"isv.BUSINESS_LIMIT_CONTROL"})
THROTTLE_WAIT = 60.0
BAD_NUMBER = frozenset({"isv.MOBILE_NUMBER_ILLEGAL", "isv.MOBILE_COUNT_OVER_LIMIT"})
OPTED_OUT = frozenset({"isv.BLACK_KEY_CONTROL_LIMIT", "isv.PHONE_NUMBER_BLACKLIST"})
ACCOUNT = frozenset(
    {
        "isv.AMOUNT_NOT_ENOUGH",
        "isv.OUT_OF_SERVICE",
        "isv.DAY_LIMIT_CONTROL",
        "isp.RAM_PERMISSION_DENY",
        "InvalidAccessKeyId.NotFound",
        "SignatureDoesNotMatch",
        "isv.ACCOUNT_NOT_EXISTS",
        "isv.ACCOUNT_ABNORMAL",
    }
)
BAD_REQUEST = frozenset(
    {
        "isv.SMS_TEMPLATE_ILLEGAL",
        "isv.SMS_SIGNATURE_ILLEGAL",
        "isv.TEMPLATE_MISSING_PARAMETERS",
        "isv.INVALID_JSON_PARAM",
        "isv.INVALID_PARAMETERS",
        "isv.PARAM_LENGTH_LIMIT",
    }
)


def result_of(code: str, biz_id: str = "") -> SendResult:
    """The answer table (docs/providers.md, "Alibaba Cloud SMS")."""
    if code == "OK":
        return SendResult(SendStatus.DELIVERED, code, "accepted by Alibaba Cloud SMS", provider_id=biz_id)
    if code in RETRY:
        return SendResult(SendStatus.RETRY, code, "Alibaba Cloud SMS is busy")
    if code in THROTTLED:
        # Alibaba throttles per number (verification codes 1 a minute, 5 an hour, 10 a
        # day; notices 50 a day): not now, later; urgent messages take the next channel.
        return SendResult(SendStatus.LATER, code, "per-number limit reached", retry_after=THROTTLE_WAIT)
    if code in BAD_NUMBER:
        return SendResult(SendStatus.FALLBACK, code, "phone number invalid", fact=UserFact.BAD_PHONE)
    if code in OPTED_OUT:
        return SendResult(SendStatus.FALLBACK, code, "number opted out of SMS", fact=UserFact.SMS_OPTED_OUT)
    if code in ACCOUNT:
        return SendResult(SendStatus.FALLBACK, code, "SMS account fault (balance, limits, credentials)", trip=True)
    if code in BAD_REQUEST:
        return SendResult(SendStatus.FAILED, code, "SMS template, signature or parameters refused")
    return SendResult(SendStatus.FALLBACK, code[:64], "unexpected Alibaba Cloud SMS answer")


def _enc(value: str) -> str:
    return quote(value, safe="~")


def signature(params: Mapping[str, str], secret: str, method: str = "POST") -> str:
    canonical = "&".join(f"{_enc(k)}={_enc(params[k])}" for k in sorted(params))
    to_sign = f"{method}&{_enc('/')}&{_enc(canonical)}"
    return base64.b64encode(hmac.new(f"{secret}&".encode(), to_sign.encode(), hashlib.sha1).digest()).decode()


def local_number(e164: str) -> str:
    """Alibaba wants mainland numbers bare and others with their country code."""
    digits = e164.lstrip("+")
    return digits[2:] if digits.startswith("86") and len(digits) == 13 else digits


class AliyunSmsAdapter:
    def __init__(
        self,
        name: str,
        base_url: str,
        access_key_id: str,
        access_key_secret: str,
        sign_name: str,
        http: Http,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.name = name
        self._url = base_url.rstrip("/") + "/"
        self._key_id = access_key_id
        self._secret = access_key_secret
        self._sign_name = sign_name
        self._http = http
        self._now = now

    def request_params(self, delivery: Delivery) -> dict[str, str]:
        payload = delivery.payload
        params = {
            "Action": "SendSms",
            "Version": "2017-05-25",
            "Format": "JSON",
            "AccessKeyId": self._key_id,
            "SignatureMethod": "HMAC-SHA1",
            "SignatureVersion": "1.0",
            "SignatureNonce": secrets.token_hex(16),
            "Timestamp": self._now().astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "PhoneNumbers": local_number(delivery.recipient),
            "SignName": payload.get("sign_name") or self._sign_name,
            "TemplateCode": payload["template_code"],
            "TemplateParam": orjson.dumps(payload.get("params", {})).decode(),
            "OutId": delivery.delivery_id,
        }
        params["Signature"] = signature(params, self._secret)
        return params

    async def send(self, delivery: Delivery) -> SendResult:
        try:
            answer = await self._http.request("POST", self._url, data=self.request_params(delivery))
        except Unreachable as exc:
            if exc.timed_out:
                return SendResult(SendStatus.FAILED, "unknown", "Alibaba Cloud SMS timed out; not resent (no dedup id)")
            return SendResult(SendStatus.RETRY, "unreachable", f"Alibaba Cloud SMS did not answer ({exc})")
        body = answer.body if isinstance(answer.body, dict) else None
        if body is None or "Code" not in body:
            return server_fault("Alibaba Cloud SMS", answer)
        return result_of(str(body["Code"]), str(body.get("BizId", "")))

    async def close(self) -> None:
        await self._http.close()
