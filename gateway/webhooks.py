"""Provider webhooks: WeChat's event callback and Alibaba Cloud SMS delivery receipts.

WeChat: the URL check answers ``echostr``; every POST must carry a valid signature
(403 and nothing recorded otherwise), is decrypted in safe mode, parsed with
defusedxml, deduplicated (WeChat retries three times when the answer takes longer
than 5 s) and answered ``success``. Follows and unfollows set the following flag;
messages, menu clicks, scans and follows open the customer-service window; the
template job report lands in the message's timeline. The policy's ``wechat_events``
rules tag the user and opt them out of marketing (``webhook_rules``); when a rule
replies, the answer is a passive text reply instead of ``success`` (encrypted and
signed in safe mode), and a retry of that callback gets the same reply again.
"""

from __future__ import annotations

import contextlib
import hmac
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import orjson
from aiohttp import web

from channels.wechat_callback import (
    CallbackError,
    check_key,
    check_signature,
    decrypt,
    encrypted_reply,
    parse_xml,
    text_reply,
)
from gateway.autostop import AutoStop
from gateway.clock import Clock
from gateway.core.users import Users
from gateway.core.wechat_rules import actions_for
from gateway.errors import HeraldError, NotFound
from gateway.logs import get_logger
from gateway.metrics import Metrics
from gateway.policy.holder import PolicyHolder
from gateway.policy.model import Policy
from gateway.policy.providers import AliyunSmsProvider, WechatProvider
from gateway.store import keys
from gateway.store.base import Store
from gateway.values.campaigns import funnel_field
from gateway.values.domain import Channel, InteractionKind, Outcome, UserFact
from gateway.values.records import Current, MessageRecord, TimelineEntry
from gateway.webhook_rules import WebhookRules

log = get_logger(__name__)
SEEN_FOR = timedelta(minutes=10)  # WeChat's retries come within seconds; receipts within hours
RECEIPTS_SEEN_FOR = timedelta(days=2)
MAX_BODY = 256 * 1024
# The fields an event is keyed and routed by are short (an openid is 28 characters, a
# MsgId 20 digits); longer ones are not WeChat's and would only make long store keys.
KEY_FIELDS = ("ToUserName", "FromUserName", "CreateTime", "MsgType", "Event", "MsgId", "MsgID", "Status")
KEY_FIELD_MAX = 128
# A callback seen: "1", or this and the reply it was answered with (a retry gets it too).
REPLIED = "r:"
# Receipts name our delivery ids, "<message id>.<channel>"; anything else is not ours.
MESSAGE_ID = re.compile(r"^m_[0-9A-Za-z]{1,64}$")

OPENS_WINDOW = {
    ("event", "subscribe"): InteractionKind.FOLLOW,
    ("event", "SCAN"): InteractionKind.QR_SCAN,
    ("event", "CLICK"): InteractionKind.MENU_CLICK,
    ("event", "scancode_push"): InteractionKind.MENU_CLICK,
    ("event", "scancode_waitmsg"): InteractionKind.MENU_CLICK,
}
USER_MESSAGES = frozenset({"text", "image", "voice", "video", "shortvideo", "location", "link"})


@dataclass(frozen=True)
class WechatCallbackConfig:
    token: str
    appid: str
    aes_key: str = ""


def configured(policy: Policy, environ: Mapping[str, str]) -> tuple[WechatCallbackConfig | None, str]:
    """WeChat's callback settings and the SMS receipt token, from policy and environment."""
    wechat, sms_token = None, ""
    for provider in policy.providers.values():
        if isinstance(provider, WechatProvider) and provider.callback_token_env:
            token = environ.get(provider.callback_token_env, "")
            if token and wechat is None:
                aes = environ.get(provider.encoding_aes_key_env, "") if provider.encoding_aes_key_env else ""
                if aes:
                    try:
                        check_key(aes)
                    except ValueError as exc:
                        log.error("wechat_aes_key_invalid", env=provider.encoding_aes_key_env, detail=str(exc))
                        aes = ""  # safe-mode callbacks are refused, saying so; plain mode still works
                wechat = WechatCallbackConfig(token, environ.get(provider.appid_env, ""), aes)
        if isinstance(provider, AliyunSmsProvider) and provider.receipt_token_env:
            sms_token = sms_token or environ.get(provider.receipt_token_env, "")
    return wechat, sms_token


class Webhooks:
    def __init__(
        self,
        store: Store,
        users: Users,
        policies: PolicyHolder,
        clock: Clock,
        metrics: Metrics,
        environ: Mapping[str, str],
        auto_stop: AutoStop,
    ) -> None:
        self._auto_stop = auto_stop
        self._store = store
        self._users = users
        self._policies = policies
        self._clock = clock
        self._metrics = metrics
        self._environ = environ
        self._configured: tuple[str, tuple[WechatCallbackConfig | None, str]] | None = None
        self._rules = WebhookRules(users, store, policies, clock, metrics)

    def _settings(self) -> tuple[WechatCallbackConfig | None, str]:
        """The callback settings of the serving policy (read again after a reload)."""
        policy = self._policies.current
        if self._configured is None or self._configured[0] != policy.version:
            self._configured = (policy.version, configured(policy, self._environ))
        return self._configured[1]

    @property
    def _wechat(self) -> WechatCallbackConfig | None:
        return self._settings()[0]

    @property
    def _sms_token(self) -> str:
        return self._settings()[1]

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/webhooks/wechat", self.wechat_check)
        app.router.add_post("/webhooks/wechat", self.wechat_event)
        app.router.add_post("/webhooks/aliyun-sms", self.sms_receipts)

    async def _body(self, request: web.Request) -> bytes | None:
        """The whole body, or None when it is over MAX_BODY. ``content.read(n)`` alone
        returns what has arrived so far: a body in two TCP segments came out cut."""
        raw = bytearray()
        while len(raw) <= MAX_BODY:
            chunk = await request.content.read(MAX_BODY + 1 - len(raw))
            if not chunk:
                return bytes(raw)
            raw += chunk
        return None

    def _refuse(self, source: str, why: str, status: int) -> web.Response:
        self._metrics.webhooks.labels(source, "refused").inc()
        log.warning("webhook_refused", source=source, reason=why)
        return web.Response(status=status, text=why)

    # --- WeChat --------------------------------------------------------------------
    async def wechat_check(self, request: web.Request) -> web.Response:
        if self._wechat is None:
            return self._refuse("wechat", "WeChat callbacks are not configured (callback_token_env)", 404)
        q = request.query
        try:
            check_signature(q.get("signature", ""), self._wechat.token, q.get("timestamp", ""), q.get("nonce", ""))
        except CallbackError as exc:
            return self._refuse("wechat", str(exc), 403)
        return web.Response(text=q.get("echostr", ""))

    async def wechat_event(self, request: web.Request) -> web.Response:
        if self._wechat is None:
            return self._refuse("wechat", "WeChat callbacks are not configured (callback_token_env)", 404)
        config = self._wechat
        q = request.query
        raw = await self._body(request)
        if raw is None:
            return self._refuse("wechat", f"body too large: at most {MAX_BODY} bytes", 413)
        try:
            if q.get("encrypt_type") == "aes":
                outer = parse_xml(raw)
                encrypted = outer.get("Encrypt", "")
                check_signature(
                    q.get("msg_signature", ""), config.token, q.get("timestamp", ""), q.get("nonce", ""), encrypted
                )
                if not config.aes_key:
                    raise CallbackError(
                        "safe-mode message but no valid EncodingAESKey configured (encoding_aes_key_env)"
                    )
                event = parse_xml(decrypt(encrypted, config.aes_key, config.appid))
            else:
                check_signature(q.get("signature", ""), config.token, q.get("timestamp", ""), q.get("nonce", ""))
                event = parse_xml(raw)
            too_long = next((name for name in KEY_FIELDS if len(event.get(name, "")) > KEY_FIELD_MAX), None)
            if too_long:
                raise CallbackError(f"{too_long} is longer than {KEY_FIELD_MAX} characters: not a WeChat event")
        except CallbackError as exc:
            status = 403 if "signature" in str(exc) or "appid" in str(exc) else 400
            return self._refuse("wechat", str(exc), status)
        key = event.get("MsgId") or f"{event.get('FromUserName')}:{event.get('CreateTime')}:{event.get('Event')}"
        seen = keys.callback_seen(key)
        try:
            fresh = await self._store.shared_put(seen, "1", SEEN_FOR, only_if_absent=True)
            if fresh:
                reply = await self._handle(event)
            else:
                # A retry: WeChat did not get our answer, so the user did not see the reply.
                stored = await self._store.shared_get(seen) or ""
                reply = stored[len(REPLIED) :] if stored.startswith(REPLIED) else None
        except HeraldError as exc:
            # Let WeChat retry: forget that we saw it.
            log.error("webhook_failed", source="wechat", error=exc.message)
            await self._forget(seen)
            return web.Response(status=503, text="try again")
        self._metrics.webhooks.labels("wechat", "ok" if fresh else "duplicate").inc()
        if reply is None:
            return web.Response(text="success")
        if fresh:
            with contextlib.suppress(HeraldError):  # done all the same; only a retry would miss it
                await self._store.shared_put(seen, REPLIED + reply, SEEN_FOR)
        return self._reply(event, reply, config, encrypted=q.get("encrypt_type") == "aes")

    def _reply(self, event: dict[str, str], text: str, config: WechatCallbackConfig, encrypted: bool) -> web.Response:
        """The passive reply: a text message to the user, from the account it wrote to."""
        created = int(self._clock.now().timestamp())
        body = text_reply(event.get("FromUserName", ""), event.get("ToUserName", ""), created, text)
        if encrypted:
            nonce = str(secrets.randbelow(10**10))
            body = encrypted_reply(body, config.token, config.aes_key, config.appid, str(created), nonce)
        self._metrics.wechat_rules.labels("replied").inc()
        return web.Response(body=body, content_type="application/xml", charset="utf-8")

    async def _forget(self, name: str) -> None:
        with contextlib.suppress(HeraldError):
            await self._store.shared_delete(name)

    async def _handle(self, event: dict[str, str]) -> str | None:
        """Record what the event says; the text to reply with, if a rule has one."""
        msg_type, name = event.get("MsgType", ""), event.get("Event", "")
        if msg_type == "event" and name in ("TEMPLATESENDJOBFINISH", "MASSSENDJOBFINISH"):
            await self._job_finished(event)
            return None
        openid = event.get("FromUserName", "")
        profile = await self._users.by_openid(openid) if openid else None
        if profile is None:
            # Nothing to tag or opt out, so no reply: it would claim what was not done.
            log.info("webhook_unknown_user", source="wechat", kind=name or msg_type)
            return None
        if msg_type == "event" and name in ("subscribe", "unsubscribe"):
            profile = await self._users.set_following(profile, name == "subscribe")
        kind = InteractionKind.USER_MESSAGE if msg_type in USER_MESSAGES else OPENS_WINDOW.get((msg_type, name))
        if kind is not None:
            at = _created(event, self._clock.now())
            await self._users.record_interaction(profile.user_id, kind, at)
        log.info("wechat_event", user_id=profile.user_id, kind=name or msg_type)
        actions = actions_for(self._policies.current.wechat_events, event)
        return await self._rules.apply(profile, actions) if actions else None

    async def _job_finished(self, event: dict[str, str]) -> None:
        status = event.get("Status", "")
        if event.get("Event") == "MASSSENDJOBFINISH":
            log.info(
                "wechat_mass_finished",
                msg_id=event.get("MsgID"),
                status=status,
                total=event.get("TotalCount"),
                filtered=event.get("FilterCount"),
                sent=event.get("SentCount"),
                errors=event.get("ErrorCount"),
            )
            return
        found = await self._store.shared_get(keys.wechat_message(event.get("MsgID", "")))
        if found is None:
            log.info("webhook_unknown_message", source="wechat", msg_id=event.get("MsgID"))
            return
        message_id, _, user_id = found.partition(" ")
        ok = status == "success"
        await self._store.add_events(
            message_id,
            [TimelineEntry(self._clock.now(), "receipt", Channel.WECHAT_TEMPLATE, status, "WeChat job report")],
            None if ok else Current("failed", Outcome.ACCEPTED, None, f"WeChat job report: {status[:64]}"),
            self._policies.current.defaults.message_retention,
        )
        self._metrics.receipts.labels(str(Channel.WECHAT_TEMPLATE), "delivered" if ok else "failed").inc()
        record = await self._count_receipt(message_id, ok, blocked=status == "failed:user block")
        if status == "failed:user block":
            try:
                profile = await self._users.get(user_id)
            except NotFound:
                profile = None  # forgotten since the send: nothing to mark
            if profile is not None:
                await self._users.apply_fact(profile, UserFact.UNFOLLOWED, "")
            if record is not None:
                await self._auto_stop.record_for(record.category, record.scenario, record.campaign_id, True)

    # --- Alibaba Cloud SMS receipts ------------------------------------------------
    async def sms_receipts(self, request: web.Request) -> web.Response:
        if self._sms_token and not hmac.compare_digest(
            request.query.get("token", "").encode("utf-8", "surrogatepass"), self._sms_token.encode()
        ):
            return self._refuse("aliyun_sms", "receipt token does not match", 403)
        raw = await self._body(request)
        if raw is None:
            return self._refuse("aliyun_sms", f"body too large: at most {MAX_BODY} bytes", 413)
        try:
            reports = orjson.loads(raw)
            if not isinstance(reports, list) or not all(isinstance(r, dict) for r in reports):
                raise ValueError("not a JSON array of reports")
        except ValueError as exc:
            return self._refuse("aliyun_sms", f"body is not a JSON array of receipts ({exc})", 400)
        try:
            for report in reports:
                await self._sms_receipt(report)
        except HeraldError as exc:
            log.error("webhook_failed", source="aliyun_sms", error=exc.message)
            return web.json_response({"code": 1, "msg": "try again"}, status=503)
        self._metrics.webhooks.labels("aliyun_sms", "ok").inc()
        return web.json_response({"code": 0, "msg": "ok"})

    async def _sms_receipt(self, report: dict[str, object]) -> None:
        out_id, biz_id = report.get("out_id"), report.get("biz_id")
        message_id = out_id.split(".", 1)[0] if isinstance(out_id, str) else ""
        if not MESSAGE_ID.match(message_id) or not isinstance(biz_id, str) or not 0 < len(biz_id) <= KEY_FIELD_MAX:
            log.info("webhook_unknown_message", source="aliyun_sms")
            return
        if not await self._store.shared_put(
            keys.receipt_seen("aliyun_sms", biz_id), "1", RECEIPTS_SEEN_FOR, only_if_absent=True
        ):
            return  # a retried receipt
        ok = report.get("success") in (True, "true")
        given = report.get("err_code")
        code = given[:64] if isinstance(given, str) and given.isprintable() and given else ""
        code = code or ("DELIVERED" if ok else "FAILED")
        if not await self._store.add_events(
            message_id,
            [TimelineEntry(self._clock.now(), "receipt", Channel.SMS, code, "delivered" if ok else "not delivered")],
            None if ok else Current("failed", Outcome.ACCEPTED, None, f"SMS receipt: {code}"),
            self._policies.current.defaults.message_retention,
        ):
            log.info("webhook_unknown_message", source="aliyun_sms")  # only a message we keep gets a receipt
            return
        self._metrics.receipts.labels(str(Channel.SMS), "delivered" if ok else "failed").inc()
        await self._count_receipt(message_id, ok)

    async def _count_receipt(self, message_id: str, ok: bool, blocked: bool = False) -> MessageRecord | None:
        """A campaign message's receipt, in its funnel (once a message, whatever retries)."""
        [record] = await self._store.get_messages([message_id])
        if record is not None and record.campaign_id:
            steps = ["delivered" if ok else "undelivered", *(["unsubscribed"] if blocked else [])]
            for step in steps:
                field = funnel_field(record.variant, step)
                await self._store.add_funnel(record.user_id, record.campaign_id, field, f"{step}:{message_id}")
        return record


def _created(event: dict[str, str], now: datetime) -> datetime:
    """When the user acted: WeChat's CreateTime (whole seconds since 1970), never later
    than now. Anything else (not ASCII digits, past now: far enough out, datetime
    overflows) is taken as now."""
    text = event.get("CreateTime", "")
    if not (text.isascii() and text.isdigit() and len(text) <= 12) or int(text) >= now.timestamp():
        return now
    return datetime.fromtimestamp(int(text), UTC)
