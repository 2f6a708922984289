"""WeChat Official Account: template messages, customer-service messages and mass send.

The answer table below is docs/providers.md, "What Herald does with each WeChat answer",
as code.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

import orjson

from channels.base import Delivery, SendResult, SendStatus, UserFact
from channels.http import Http, HttpAnswer, Unreachable, server_fault, unreachable
from channels.wechat_token import TokenError, WechatToken
from gateway.values.domain import Channel

MASS_MAX = 10_000
MASS_MIN = 2
MASS_MAX_WAITS = 30


class Act(StrEnum):
    RETRY = "retry"
    REFRESH = "refresh"  # token invalid: refresh the shared token, retry once
    NEXT_MINUTE = "next_minute"
    OUT_OF_QUOTA = "out_of_quota"
    AFTER_60S = "after_60s"
    DUPLICATE = "duplicate"  # already sent: count as delivered
    WINDOW = "window"  # CS window closed or used up: fall back, no retry
    UNREACHABLE = "unreachable"  # user gone from WeChat: mark, fall back
    REFUSED = "refused"  # user refused this template: fall back
    CONFIG = "config"  # our configuration is wrong: breaker, alert
    BAD_REQUEST = "bad_request"  # fail permanently


ANSWERS: dict[int, Act] = {
    -1: Act.RETRY,
    40001: Act.REFRESH,
    40014: Act.REFRESH,
    42001: Act.REFRESH,
    45011: Act.NEXT_MINUTE,
    45009: Act.OUT_OF_QUOTA,
    45028: Act.OUT_OF_QUOTA,
    45066: Act.AFTER_60S,
    45065: Act.DUPLICATE,
    45015: Act.WINDOW,
    45047: Act.WINDOW,
    43004: Act.UNREACHABLE,
    40003: Act.UNREACHABLE,
    43101: Act.REFUSED,
    40164: Act.CONFIG,
    40013: Act.CONFIG,
    40125: Act.CONFIG,
    40243: Act.CONFIG,
    48001: Act.CONFIG,
    48003: Act.CONFIG,
    40037: Act.BAD_REQUEST,
    47003: Act.BAD_REQUEST,
    40007: Act.BAD_REQUEST,
    40032: Act.BAD_REQUEST,
    40130: Act.BAD_REQUEST,
    45067: Act.BAD_REQUEST,
}


def result_of(code: int, seconds_to_next_minute: float, provider_id: str = "") -> SendResult:
    """What to do with WeChat's ``errcode`` (0: sent)."""
    text = str(code)
    if code == 0:
        return SendResult(SendStatus.DELIVERED, "0", "accepted by WeChat", provider_id=provider_id)
    act = ANSWERS.get(code)
    if act is Act.RETRY or act is Act.REFRESH:
        return SendResult(SendStatus.RETRY, text, "WeChat is busy" if code == -1 else "access token still refused")
    if act is Act.NEXT_MINUTE:
        return SendResult(SendStatus.RETRY, text, "per-minute quota reached", retry_after=seconds_to_next_minute)
    if act is Act.AFTER_60S:
        return SendResult(SendStatus.RETRY, text, "retried too fast", retry_after=60.0)
    if act is Act.DUPLICATE:
        return SendResult(SendStatus.DELIVERED, text, "already sent (duplicate clientmsgid)")
    if act is Act.OUT_OF_QUOTA:
        return SendResult(SendStatus.FALLBACK, text, "channel out of quota until reset", trip=True)
    if act is Act.WINDOW:
        return SendResult(SendStatus.FALLBACK, text, "customer-service window closed or used up")
    if act is Act.UNREACHABLE:
        return SendResult(SendStatus.FALLBACK, text, "user not reachable on WeChat", fact=UserFact.UNFOLLOWED)
    if act is Act.REFUSED:
        return SendResult(SendStatus.FALLBACK, text, "user refuses this template", fact=UserFact.REFUSED_TEMPLATE)
    if act is Act.CONFIG:
        return SendResult(
            SendStatus.FALLBACK, text, "WeChat configuration fault (credentials, IP, permission)", trip=True
        )
    if act is Act.BAD_REQUEST:
        return SendResult(SendStatus.FAILED, text, "WeChat refused the request as malformed")
    # A code the table does not know: another channel may still reach the user.
    return SendResult(SendStatus.FALLBACK, text, "unexpected WeChat answer")


def template_body(delivery: Delivery) -> dict[str, Any]:
    payload = delivery.payload
    body: dict[str, Any] = {
        "touser": delivery.recipient,
        "template_id": payload["template_id"],
        "client_msg_id": delivery.delivery_id,
        "data": {key: {"value": value} for key, value in payload["fields"].items()},
    }
    if payload.get("url"):
        body["url"] = payload["url"]
    if payload.get("miniprogram"):
        body["miniprogram"] = payload["miniprogram"]
    return body


def custom_body(delivery: Delivery) -> dict[str, Any]:
    payload = delivery.payload
    if "news" in payload:
        return {"touser": delivery.recipient, "msgtype": "news", "news": {"articles": [payload["news"]]}}
    return {"touser": delivery.recipient, "msgtype": "text", "text": {"content": payload["text"]}}


def mass_content(payload: dict[str, Any]) -> dict[str, Any]:
    if "media_id" in payload:
        return {"msgtype": "mpnews", "mpnews": {"media_id": payload["media_id"]}, "send_ignore_reprint": 0}
    return {"msgtype": "text", "text": {"content": payload["text"]}}


@dataclass
class _Batch:
    content: dict[str, Any]
    started: float
    members: dict[str, tuple[str, asyncio.Future[SendResult]]] = field(default_factory=dict)
    timer: asyncio.TimerHandle | None = None


class WechatAdapter:
    """One WeChat account: the three WeChat channels share its token and its breaker."""

    # Deliveries on these channels join a batch sent as one call.
    batched = frozenset({Channel.WECHAT_MASS})

    def __init__(
        self,
        name: str,
        base_url: str,
        token: WechatToken,
        http: Http,
        now: Callable[[], datetime],
        *,
        mass_wait: float = 2.0,
        mass_max: int = MASS_MAX,
        on_batch: Callable[[int], None] = lambda size: None,
    ) -> None:
        self.name = name
        self._base_url = base_url.rstrip("/")
        self.token = token
        self._http = http
        self._now = now
        self._mass_wait = mass_wait
        self._mass_max = mass_max
        self._batches: dict[str, _Batch] = {}
        self._flushing: set[asyncio.Task[None]] = set()
        self._on_batch = on_batch

    def _to_next_minute(self) -> float:
        now = self._now()
        return 60.0 - now.second - now.microsecond / 1e6 + 0.5

    async def _call(self, path: str, body: dict[str, Any]) -> tuple[HttpAnswer | None, SendResult | None]:
        """POST with the shared token; on a token error refresh it and try once more."""
        try:
            token = await self.token.get()
            answer = await self._http.request(
                "POST", f"{self._base_url}{path}", params={"access_token": token}, json=body
            )
            code = _errcode(answer)
            if code is not None and ANSWERS.get(code) is Act.REFRESH:
                token = await self.token.invalidate(token)
                answer = await self._http.request(
                    "POST", f"{self._base_url}{path}", params={"access_token": token}, json=body
                )
        except TokenError as exc:
            if exc.code.lstrip("-").isdigit():
                return None, result_of(int(exc.code), self._to_next_minute())
            return None, SendResult(SendStatus.RETRY, "token", exc.detail)
        except Unreachable as exc:
            return None, unreachable("WeChat", str(exc))
        if answer.status >= 500 or not isinstance(answer.body, dict):
            return None, server_fault("WeChat", answer)
        return answer, None

    async def send(self, delivery: Delivery) -> SendResult:
        if delivery.channel is Channel.WECHAT_MASS:
            return await self._join_mass(delivery)
        path, body = (
            ("/cgi-bin/message/template/send", template_body(delivery))
            if delivery.channel is Channel.WECHAT_TEMPLATE
            else ("/cgi-bin/message/custom/send", custom_body(delivery))
        )
        answer, failed = await self._call(path, body)
        if failed is not None:
            return failed
        assert answer is not None
        return result_of(_errcode(answer) or 0, self._to_next_minute(), str(answer.body.get("msgid", "")))

    # --- mass send: one call for many users of one campaign, variant and content ------
    async def _join_mass(self, delivery: Delivery) -> SendResult:
        content = mass_content(delivery.payload)
        key = hashlib.sha1(
            orjson.dumps(
                [delivery.scenario, delivery.campaign_id, delivery.variant, content], option=orjson.OPT_SORT_KEYS
            )
        ).hexdigest()
        loop = asyncio.get_running_loop()
        batch = self._batches.get(key)
        if batch is None:
            batch = self._batches[key] = _Batch(content, loop.time())
        # Flushed when no one joined for ``mass_wait`` (a campaign released over a few
        # seconds still makes one call), or at the latest MASS_MAX_WAITS times that.
        if batch.timer is not None:
            batch.timer.cancel()
        flush_at = min(loop.time() + self._mass_wait, batch.started + self._mass_wait * MASS_MAX_WAITS)
        batch.timer = loop.call_at(flush_at, self._flush_later, key)
        if delivery.recipient in batch.members:  # the same user twice in one batch: WeChat would send once
            return SendResult(SendStatus.FALLBACK, "dup", "user already in this mass send")
        future: asyncio.Future[SendResult] = loop.create_future()
        batch.members[delivery.recipient] = (delivery.delivery_id, future)
        if len(batch.members) >= self._mass_max:
            self._flush_later(key)
        return await future

    def _flush_later(self, key: str) -> None:
        batch = self._batches.pop(key, None)
        if batch is None:
            return
        if batch.timer is not None:
            batch.timer.cancel()
        task = asyncio.create_task(self._flush(batch), name="wechat-mass-flush")
        self._flushing.add(task)
        task.add_done_callback(self._flushing.discard)

    async def _flush(self, batch: _Batch) -> None:
        members = batch.members
        self._on_batch(len(members))
        if len(members) < MASS_MIN:
            result = SendResult(SendStatus.FALLBACK, "40130", "a mass send needs at least 2 users; none joined")
        else:
            ids = sorted(delivery_id for delivery_id, _ in members.values())
            clientmsgid = "h" + hashlib.sha1("\n".join(ids).encode()).hexdigest()
            body = {"touser": list(members), **batch.content, "clientmsgid": clientmsgid}
            answer, failed = await self._call("/cgi-bin/message/mass/send", body)
            if failed is not None:
                result = failed
            else:
                assert answer is not None
                result = result_of(_errcode(answer) or 0, self._to_next_minute(), str(answer.body.get("msg_id", "")))
        for _, future in members.values():
            if not future.done():
                future.set_result(result)

    async def close(self) -> None:
        for key in list(self._batches):
            self._flush_later(key)
        if self._flushing:
            await asyncio.wait(self._flushing, timeout=10)
        await self._http.close()


def _errcode(answer: HttpAnswer) -> int | None:
    body = answer.body if isinstance(answer.body, dict) else {}
    code = body.get("errcode")
    return int(code) if isinstance(code, int) and code != 0 else None
