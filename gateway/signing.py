"""Signed, expiring tokens for links Herald puts in messages (unsubscribe, clicks):
a base64url JSON body and a truncated HMAC-SHA256 of it, keyed by a secret every
replica shares, with a purpose mixed in so a token of one kind is never another."""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import datetime, timedelta
from typing import Any

import orjson

TOKEN_MAX = 4096


class BadToken(ValueError):
    pass


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Signer:
    def __init__(self, key: bytes, purpose: str, lifetime: timedelta, what: str) -> None:
        if len(key) < 32:
            raise ValueError("the link signing key must be at least 32 bytes")
        self._key = hashlib.sha256(purpose.encode() + b"\x00" + key).digest() if purpose else key
        self._lifetime = lifetime
        self._what = what  # "unsubscribe link", "link": how errors name the token

    def _sign(self, body: str) -> str:
        return _b64(hmac.new(self._key, body.encode(), hashlib.sha256).digest()[:20])

    def issue(self, data: dict[str, Any], now: datetime) -> str:
        body = _b64(orjson.dumps({**data, "exp": int((now + self._lifetime).timestamp())}))
        return f"{body}.{self._sign(body)}"

    def read(self, token: str, now: datetime) -> dict[str, Any]:
        """The token's data, or BadToken (forged, damaged or expired)."""
        body, _, signature = token.partition(".")
        # Tokens are base64url: anything else is not ours (and hmac.compare_digest
        # refuses str with non-ASCII characters).
        invalid = BadToken(f"this {self._what} is not valid")
        if not body or len(token) > TOKEN_MAX or not token.isascii():
            raise invalid
        if not hmac.compare_digest(signature, self._sign(body)):
            raise invalid
        try:
            data: dict[str, Any] = orjson.loads(_unb64(body))
            expires = int(data["exp"])
        except (ValueError, KeyError, TypeError) as exc:  # TypeError: a body not a JSON object
            raise invalid from exc
        if expires < now.timestamp():
            raise BadToken(f"this {self._what} has expired; use the one in a more recent message")
        return data
