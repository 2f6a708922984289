"""WeChat's access token, one for every replica.

Fetching a new token may invalidate the old one, so the token lives in the shared store:
one replica at a time refreshes it (a short lock in the store), before it expires, and
everyone else reads it. A token WeChat calls invalid (40001/40014/42001) is dropped
only if it is still the stored one, so a burst of failures refreshes it once.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

import orjson

from channels.http import Http, Unreachable
from gateway.clock import Clock
from gateway.store import keys
from gateway.store.base import Store

# Refresh when less than this is left (WeChat keeps old and new valid for 5 minutes).
REFRESH_MARGIN = timedelta(minutes=5)
LOCK_TTL = timedelta(seconds=10)
WAIT_STEP = 0.05


class TokenError(Exception):
    """WeChat refused to issue a token (``code`` is its errcode, or ``unreachable``)."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


@dataclass(frozen=True)
class _Token:
    value: str
    expires_at: datetime


class WechatToken:
    def __init__(self, http: Http, base_url: str, appid: str, secret: str, store: Store, clock: Clock) -> None:
        self._http = http
        self._base_url = base_url.rstrip("/")
        self._appid = appid
        self._secret = secret
        self._store = store
        self._clock = clock
        self._name = keys.wechat_token(appid)
        self._cached: _Token | None = None
        self._local = asyncio.Lock()
        self.fetches = 0  # tokens this process fetched from WeChat

    def _fresh(self, token: _Token | None, bad: str | None = None) -> bool:
        return token is not None and token.value != bad and token.expires_at - REFRESH_MARGIN > self._clock.now()

    async def _stored(self) -> _Token | None:
        raw = await self._store.shared_get(self._name)
        if raw is None:
            return None
        data = orjson.loads(raw)
        return _Token(data["token"], datetime.fromisoformat(data["expires_at"]))

    async def get(self) -> str:
        if self._fresh(self._cached):
            assert self._cached is not None
            return self._cached.value
        return await self.refresh()

    async def invalidate(self, bad: str) -> str:
        """WeChat called ``bad`` invalid: a new token (fetched once across replicas)."""
        if self._cached is not None and self._cached.value == bad:
            self._cached = None
        return await self.refresh(bad)

    async def refresh(self, bad: str | None = None) -> str:
        async with self._local:  # one refresher in this process
            stored = await self._stored()
            if self._fresh(stored, bad):
                self._cached = stored
                assert stored is not None
                return stored.value
            owner = secrets.token_hex(8)
            deadline = asyncio.get_running_loop().time() + LOCK_TTL.total_seconds()
            while True:
                if await self._store.shared_put(f"{self._name}:lock", owner, LOCK_TTL, only_if_absent=True):
                    try:
                        stored = await self._stored()  # another replica may have just done it
                        if not self._fresh(stored, bad):
                            stored = await self._fetch()
                            ttl = stored.expires_at - self._clock.now()
                            await self._store.shared_put(self._name, _encode(stored), ttl)
                    finally:
                        await self._store.shared_delete(f"{self._name}:lock", only_if=owner)
                else:
                    await asyncio.sleep(WAIT_STEP)
                    stored = await self._stored()
                    if not self._fresh(stored, bad):
                        if asyncio.get_running_loop().time() > deadline:
                            raise TokenError("lock", "timed out waiting for another replica to refresh the token")
                        continue
                assert stored is not None
                self._cached = stored
                return stored.value

    async def _fetch(self) -> _Token:
        try:
            answer = await self._http.request(
                "GET",
                f"{self._base_url}/cgi-bin/token",
                params={"grant_type": "client_credential", "appid": self._appid, "secret": self._secret},
            )
        except Unreachable as exc:
            raise TokenError("unreachable", f"WeChat token endpoint did not answer ({exc})") from exc
        body = answer.body if isinstance(answer.body, dict) else {}
        if answer.status >= 500 or "access_token" not in body:
            code = str(body.get("errcode", f"http{answer.status}"))
            # errmsg may echo request data; keep only the code.
            raise TokenError(code, f"WeChat refused an access token (errcode {code})")
        self.fetches += 1
        expires_in = int(body.get("expires_in", 7200))
        return _Token(str(body["access_token"]), self._clock.now() + timedelta(seconds=expires_in))


def _encode(token: _Token) -> str:
    return orjson.dumps({"token": token.value, "expires_at": token.expires_at.isoformat()}).decode()
