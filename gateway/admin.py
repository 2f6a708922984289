"""The admin HTTP API for kill switches (on the admin listener, loopback by default).

Every call needs ``Authorization: Bearer <HERALD_ADMIN_TOKEN>``. ``herald serve`` started
without one makes a local token (``gateway/admin_token.py``); a gateway built with no
token at all (in code) has the API off and says so. A switch needs a scope, a reason and an actor; every change is
in the audit list. Bad input is answered 400 with what is wrong, and records nothing:
text fields are plain text (no control characters, line breaks or bidirectional
controls), unknown fields are refused rather than ignored (a misspelt ``expires_in``
would otherwise make a switch that never expires).

    GET    /admin/kill-switches                 the active switches
    POST   /admin/kill-switches                 {"scope", "value", "reason", "actor", "expires_in"?, "expires_at"?}
    DELETE /admin/kill-switches/{id}            {"actor", "note"?}
    GET    /admin/kill-switches/audit?limit=N   the changes, most recent first
"""

from __future__ import annotations

import hmac
import re
import unicodedata
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import orjson
from aiohttp import web

from gateway.clock import Clock
from gateway.durations import LONGEST, parse_duration
from gateway.errors import HeraldError
from gateway.killswitches import KillSwitches
from gateway.logs import get_logger
from gateway.policy.holder import PolicyHolder
from gateway.store.base import Store
from gateway.values.domain import Category, Channel
from gateway.values.records import KillSwitch, ScopeKind

log = get_logger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
TEXT_MAX = 500
EXPIRY_MAX = 64  # characters of expires_in or expires_at
CREATE_FIELDS = ("scope", "value", "reason", "actor", "expires_in", "expires_at")
CLEAR_FIELDS = ("actor", "note")
# What an error may repeat back: names as policies write them (lowercase, with a
# letter: never a phone number, an email address or an openid), our switch ids, and
# field names. Anything else is described, not repeated.
NAME = re.compile(r"^(?=.*[a-z])[a-z0-9]+(?:[._-][a-z0-9]+)*$")
SWITCH_ID = re.compile(r"^ks_[0-9A-Z]{26}$")
FIELD = re.compile(r"^[a-z_]{1,32}$")
ID_CHARACTERS = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# Controls that reorder how text is displayed (they can disguise a reason or an actor).
BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def switch_view(switch: KillSwitch) -> dict[str, Any]:
    """A switch as the admin API shows it."""
    return {
        "id": switch.switch_id,
        "scope": switch.scope.value,
        "value": switch.value,
        "reason": switch.reason,
        "actor": switch.actor,
        "created_at": switch.created_at.isoformat(),
        "expires_at": None if switch.expires_at is None else switch.expires_at.isoformat(),
    }


def _problem(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status, dumps=lambda v: orjson.dumps(v).decode())


def _json(value: Any, status: int = 200) -> web.Response:
    return web.json_response(value, status=status, dumps=lambda v: orjson.dumps(v).decode())


class BadRequest(ValueError):
    pass


def _control(text: str) -> str | None:
    """The first character that has no place in one line of plain text, if any."""
    for char in text:
        if unicodedata.category(char) in ("Cc", "Zl", "Zp") or char in BIDI_CONTROLS:
            return char
    return None


def _plain(name: str, value: str, longest: int = TEXT_MAX) -> str:
    if len(value) > longest:
        raise BadRequest(f"'{name}' is longer than {longest} characters")
    char = _control(value)
    if char is not None:
        raise BadRequest(
            f"'{name}' contains a control character (U+{ord(char):04X}); write it as plain text on one line"
        )
    return value.strip()


def _text(body: dict[str, Any], name: str, required: bool = True) -> str:
    value = body.get(name)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value.strip()):
        raise BadRequest(f"'{name}' is required: a non-empty string" if required else f"'{name}' must be a string")
    return _plain(name, value)


def _quoted(value: str, pattern: re.Pattern[str]) -> str:
    """`` 'value'`` when an error may repeat it, else nothing."""
    return f" '{value}'" if len(value) <= 64 and pattern.match(value) else ""


def _fields(body: dict[str, Any], known: tuple[str, ...]) -> None:
    unknown = sorted(set(body) - set(known))
    if unknown:
        shown = ", ".join(q.strip() for q in (_quoted(name, FIELD) for name in unknown[:5]) if q)
        raise BadRequest(f"unknown field {shown or '(not a plain name)'}; the fields are: {', '.join(known)}")


class AdminApi:
    def __init__(self, token: str, switches: KillSwitches, store: Store, policies: PolicyHolder, clock: Clock) -> None:
        self._token = token
        self._switches = switches
        self._store = store
        self._policies = policies
        self._clock = clock

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/admin/kill-switches", self._guarded(self.list))
        app.router.add_post("/admin/kill-switches", self._guarded(self.create))
        app.router.add_get("/admin/kill-switches/audit", self._guarded(self.audit))
        app.router.add_delete("/admin/kill-switches/{switch_id}", self._guarded(self.clear))

    def _guarded(self, handler: Handler) -> Handler:
        async def guarded(request: web.Request) -> web.StreamResponse:
            if not self._token:
                return _problem(403, "the admin API is off: start the gateway with HERALD_ADMIN_TOKEN set")
            # aiohttp keeps header bytes that are not UTF-8 as surrogates: encode them back.
            given = request.headers.get("Authorization", "").encode("utf-8", "surrogateescape")
            if not hmac.compare_digest(given, f"Bearer {self._token}".encode()):
                return _problem(401, "missing or wrong admin token (Authorization: Bearer <HERALD_ADMIN_TOKEN>)")
            try:
                return await handler(request)
            except BadRequest as exc:
                return _problem(400, str(exc))
            except HeraldError as exc:
                return _problem(503, exc.message)

        return guarded

    async def _body(self, request: web.Request) -> dict[str, Any]:
        try:
            body = orjson.loads(await request.read() or b"{}")
        except orjson.JSONDecodeError as exc:
            raise BadRequest(f"the body is not JSON ({exc})") from exc
        if not isinstance(body, dict):
            raise BadRequest("the body must be a JSON object")
        return body

    async def list(self, request: web.Request) -> web.Response:
        await self._switches.refresh()
        return _json({"switches": [switch_view(s) for s in self._switches.current()]})

    def _value(self, scope: ScopeKind, value: str) -> str:
        policy = self._policies.current
        if scope is ScopeKind.GLOBAL:
            if value:
                raise BadRequest("a global switch takes no 'value'")
            return ""
        if not value:
            raise BadRequest(f"a {scope} switch needs a 'value' (which {scope})")
        known: dict[ScopeKind, list[str]] = {
            ScopeKind.CATEGORY: [str(c) for c in Category],
            ScopeKind.CHANNEL: [str(c) for c in Channel],
            ScopeKind.BU: sorted(policy.business_units),
            ScopeKind.SCENARIO: sorted(policy.scenarios),
        }
        if scope in known and value not in known[scope]:
            raise BadRequest(f"unknown {scope}{_quoted(value, NAME)}; one of: {', '.join(known[scope])}")
        return value

    async def create(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        _fields(body, CREATE_FIELDS)
        try:
            scope = ScopeKind(body.get("scope", ""))
        except ValueError:
            raise BadRequest(f"'scope' must be one of: {', '.join(s.value for s in ScopeKind)}") from None
        value = self._value(scope, _text(body, "value", required=False))
        reason, actor = _text(body, "reason"), _text(body, "actor")
        now = self._clock.now()
        expires_at = self._expiry(body, now)
        switch = await self._switches.set(scope, value, reason, actor, expires_at)
        return _json({"switch": switch_view(switch)}, status=201)

    def _expiry(self, body: dict[str, Any], now: datetime) -> datetime | None:
        expires_in = body.get("expires_in")
        if expires_in is not None:
            if not isinstance(expires_in, str):
                raise BadRequest("'expires_in' must be a string such as 30m, 6h or 2d")
            try:
                span = parse_duration(_plain("expires_in", expires_in, EXPIRY_MAX))
            except ValueError as exc:
                raise BadRequest(f"'expires_in': {exc}") from exc
            return now + span
        expires_at = body.get("expires_at")
        if expires_at is not None:
            if not isinstance(expires_at, str):
                raise BadRequest("'expires_at' must be a string: an ISO 8601 time with its offset")
            try:
                at = datetime.fromisoformat(_plain("expires_at", expires_at, EXPIRY_MAX))
            except ValueError:
                raise BadRequest("'expires_at' must be an ISO 8601 time with its offset") from None
            if at.tzinfo is None:
                raise BadRequest("'expires_at' needs a UTC offset, e.g. 2026-11-11T04:00:00+00:00")
            if at <= now:
                raise BadRequest("'expires_at' is in the past")
            if at - now > LONGEST:
                raise BadRequest(f"'expires_at' is more than {LONGEST.days // 365} years away")
            return at
        return None

    async def clear(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        _fields(body, CLEAR_FIELDS)
        actor = _text(body, "actor")
        note = _text(body, "note", required=False)
        switch_id = request.match_info["switch_id"]
        # An id that cannot be ours is not looked up.
        cleared = await self._switches.clear(switch_id, actor, note) if ID_CHARACTERS.match(switch_id) else None
        if cleared is None:
            shown = _quoted(switch_id, SWITCH_ID) or " with that id"
            return _problem(404, f"no active kill switch{shown}; GET /admin/kill-switches lists them")
        return _json({"cleared": switch_view(cleared)})

    async def audit(self, request: web.Request) -> web.Response:
        text = request.query.get("limit", "50")
        digits = text.lstrip("0") if text.isascii() and text.isdigit() else ""
        if not digits or len(digits) > 4 or not 1 <= int(digits) <= 1000:
            raise BadRequest("'limit' must be a whole number from 1 to 1000")
        limit = int(digits)
        entries = await self._store.kill_audit(limit)
        return _json(
            {
                "audit": [
                    {
                        "at": e.at.isoformat(),
                        "action": e.action,
                        "actor": e.actor,
                        "note": e.note,
                        "switch": switch_view(e.switch),
                    }
                    for e in entries
                ]
            }
        )
