"""One-click unsubscribe tokens (RFC 8058): signed, expiring, naming the user and what
they unsubscribe from. Pure apart from the key, which every replica shares."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from gateway.signing import BadToken, Signer
from gateway.values.domain import Category, Channel

LIFETIME = timedelta(days=60)
__all__ = ["LIFETIME", "BadToken", "Unsubscribe", "UnsubscribeTokens"]


@dataclass(frozen=True)
class Unsubscribe:
    user_id: str
    category: Category
    channel: Channel
    # What the mail was, for auto-stop.
    scenario: str = ""
    campaign_id: str = ""


class UnsubscribeTokens:
    def __init__(self, key: bytes) -> None:
        # No purpose mixed in: links issued before clicks were signed stay valid.
        self._signer = Signer(key, "", LIFETIME, "unsubscribe link")

    def issue(self, what: Unsubscribe, now: datetime) -> str:
        data = {
            "u": what.user_id,
            "c": str(what.category),
            "ch": str(what.channel),
            "s": what.scenario,
            "cmp": what.campaign_id,
        }
        return self._signer.issue(data, now)

    def read(self, token: str, now: datetime) -> Unsubscribe:
        data = self._signer.read(token, now)
        try:
            return Unsubscribe(
                str(data["u"]),
                Category(data["c"]),
                Channel(data["ch"]),
                str(data.get("s", "")),
                str(data.get("cmp", "")),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise BadToken("this unsubscribe link is not valid") from exc
