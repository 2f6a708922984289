"""JPush v3 (devices in mainland China): ``POST /v3/push`` with HTTP Basic
``appKey:masterSecret``; errors come as ``{"error": {"code", "message"}}``."""

from __future__ import annotations

import base64
from typing import Any

from channels.base import Delivery, SendResult, SendStatus, UserFact
from channels.http import Http, HttpAnswer, Unreachable, unreachable

RETRY = frozenset({1000, 1030, 2002})
DEAD_TOKEN = frozenset({1011})
CREDENTIALS = frozenset({1004, 1008, 1009})


def result_of(answer: HttpAnswer) -> SendResult:
    """The answer table (docs/providers.md, "JPush"): JPush v3 error codes."""
    body = answer.body if isinstance(answer.body, dict) else {}
    if answer.status == 200 and "msg_id" in body:
        return SendResult(SendStatus.DELIVERED, "0", "accepted by JPush", provider_id=str(body["msg_id"]))
    error = body.get("error", {}) if isinstance(body.get("error"), dict) else {}
    code = int(error.get("code", 0) or 0)
    text = str(code or f"http{answer.status}")
    if code in DEAD_TOKEN:
        return SendResult(
            SendStatus.FALLBACK, text, "no device for this registration id", fact=UserFact.DEAD_DEVICE_TOKEN
        )
    if code in RETRY or answer.status >= 500 or answer.status == 429:
        return SendResult(SendStatus.RETRY, text, "JPush is busy", retry_after=answer.retry_after)
    if code in CREDENTIALS or answer.status == 401:
        return SendResult(SendStatus.FALLBACK, text, "JPush refused our app key or secret", trip=True)
    return SendResult(SendStatus.FAILED, text, "JPush refused the message as malformed")


def jpush_body(delivery: Delivery) -> dict[str, Any]:
    payload = delivery.payload
    extras = {"message_id": delivery.message_id, **({"url": payload["url"]} if payload.get("url") else {})}
    return {
        "platform": "all",
        "audience": {"registration_id": [delivery.recipient]},
        "notification": {
            "alert": payload["body"],
            "android": {"alert": payload["body"], "title": payload["title"], "extras": extras},
            "ios": {"alert": {"title": payload["title"], "body": payload["body"]}, "extras": extras},
        },
        "options": {"time_to_live": 86400, "apns_production": True},
    }


class JpushAdapter:
    def __init__(self, name: str, base_url: str, app_key: str, master_secret: str, http: Http) -> None:
        self.name = name
        self._url = f"{base_url.rstrip('/')}/v3/push"
        self._auth = "Basic " + base64.b64encode(f"{app_key}:{master_secret}".encode()).decode()
        self._http = http

    async def send(self, delivery: Delivery) -> SendResult:
        try:
            answer = await self._http.request(
                "POST", self._url, json=jpush_body(delivery), headers={"Authorization": self._auth}
            )
        except Unreachable as exc:
            return unreachable("JPush", str(exc))
        return result_of(answer)

    async def close(self) -> None:
        await self._http.close()
