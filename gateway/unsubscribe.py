"""One-click unsubscribe tokens (RFC 8058): signed, expiring, naming the user and what
they unsubscribe from. Pure apart from the key, which every replica shares."""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass
from datetime import datetime, timedelta

import orjson

from gateway.values.domain import Category, Channel

LIFETIME = timedelta(days=60)
TOKEN_MAX = 2048  # what we issue is a few hundred characters


class BadToken(ValueError):
    pass


@dataclass(frozen=True)
class Unsubscribe:
    user_id: str
    category: Category
    channel: Channel
    # What the mail was, for auto-stop.
    scenario: str = ""
    campaign_id: str = ""


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class UnsubscribeTokens:
    def __init__(self, key: bytes) -> None:
        if len(key) < 32:
            raise ValueError("the unsubscribe signing key must be at least 32 bytes")
        self._key = key

    def _sign(self, body: str) -> str:
        return _b64(hmac.new(self._key, body.encode(), hashlib.sha256).digest()[:20])

    def issue(self, what: Unsubscribe, now: datetime) -> str:
        body = _b64(
            orjson.dumps(
                {
                    "u": what.user_id,
                    "c": str(what.category),
                    "ch": str(what.channel),
                    "s": what.scenario,
                    "cmp": what.campaign_id,
                    "exp": int((now + LIFETIME).timestamp()),
                }
            )
        )
        return f"{body}.{self._sign(body)}"

    def read(self, token: str, now: datetime) -> Unsubscribe:
        body, _, signature = token.partition(".")
        # Tokens are base64url: anything else is not ours (and hmac.compare_digest
        # refuses str with non-ASCII characters).
        if not body or len(token) > TOKEN_MAX or not token.isascii():
            raise BadToken("this unsubscribe link is not valid")
        if not hmac.compare_digest(signature, self._sign(body)):
            raise BadToken("this unsubscribe link is not valid")
        try:
            data = orjson.loads(_unb64(body))
            what = Unsubscribe(
                str(data["u"]),
                Category(data["c"]),
                Channel(data["ch"]),
                str(data.get("s", "")),
                str(data.get("cmp", "")),
            )
            expires = int(data["exp"])
        except (ValueError, KeyError, TypeError) as exc:
            raise BadToken("this unsubscribe link is not valid") from exc
        if expires < now.timestamp():
            raise BadToken("this unsubscribe link has expired; use the link in a more recent message")
        return what
