"""The admin HTTP API for kill switches (on the admin listener, loopback by default).

Every call needs ``Authorization: Bearer <HERALD_ADMIN_TOKEN>``; with no token set the
API is off and says so. A switch needs a scope, a reason and an actor; every change is
in the audit list.

    GET    /admin/kill-switches                 the active switches
    POST   /admin/kill-switches                 {"scope", "value", "reason", "actor", "expires_in"?, "expires_at"?}
    DELETE /admin/kill-switches/{id}            {"actor", "note"?}
    GET    /admin/kill-switches/audit?limit=N   the changes, most recent first
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

import orjson
from aiohttp import web

from gateway.clock import Clock
from gateway.durations import parse_duration
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


def _text(body: dict[str, Any], name: str, required: bool = True) -> str:
    value = body.get(name, "")
    if not isinstance(value, str) or (required and not value.strip()):
        raise BadRequest(f"'{name}' is required: a non-empty string")
    if len(value) > TEXT_MAX:
        raise BadRequest(f"'{name}' is longer than {TEXT_MAX} characters")
    return value.strip()


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
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {self._token}".encode()):
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
            raise BadRequest(f"unknown {scope} '{value}'; one of: {', '.join(known[scope])}")
        return value

    async def create(self, request: web.Request) -> web.Response:
        body = await self._body(request)
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
        if body.get("expires_in"):
            try:
                span = parse_duration(str(body["expires_in"]))
            except ValueError as exc:
                raise BadRequest(f"'expires_in': {exc}") from exc
            if span <= timedelta(0):
                raise BadRequest("'expires_in' must be positive")
            return now + span
        if body.get("expires_at"):
            try:
                at = datetime.fromisoformat(str(body["expires_at"]))
            except ValueError:
                raise BadRequest("'expires_at' must be an ISO 8601 time with its offset") from None
            if at.tzinfo is None:
                raise BadRequest("'expires_at' needs a UTC offset, e.g. 2026-11-11T04:00:00+00:00")
            if at <= now:
                raise BadRequest("'expires_at' is in the past")
            return at
        return None

    async def clear(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        actor = _text(body, "actor")
        note = _text(body, "note", required=False)
        cleared = await self._switches.clear(request.match_info["switch_id"], actor, note)
        if cleared is None:
            return _problem(404, f"no active kill switch '{request.match_info['switch_id'][:64]}'")
        return _json({"cleared": switch_view(cleared)})

    async def audit(self, request: web.Request) -> web.Response:
        try:
            limit = int(request.query.get("limit", "50"))
        except ValueError:
            raise BadRequest("'limit' must be a whole number") from None
        if not 1 <= limit <= 1000:
            raise BadRequest("'limit' must be 1-1000")
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
