"""Click tracking for campaign messages: each http(s) link of a campaign message is
sent as a signed redirect on the public listener, ``<public url>/c/<token>``. The
token names the message, user, campaign, variant and the one URL it may redirect to,
so the redirect can never be pointed anywhere else (no open redirect)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from gateway.core.validate import is_web_link
from gateway.signing import BadToken, Signer
from gateway.values.jobs import Job

LIFETIME = timedelta(days=90)
# The payload fields that hold a link the user opens (WeChat template and news, push,
# email); others (media ids, template codes) are left alone.
LINK_FIELDS = frozenset({"url", "link", "click_url"})


@dataclass(frozen=True)
class Click:
    message_id: str
    user_id: str
    campaign_id: str
    variant: str
    url: str


class ClickTokens:
    def __init__(self, key: bytes) -> None:
        self._signer = Signer(key, "click", LIFETIME, "link")

    def issue(self, click: Click, now: datetime) -> str:
        data = {"m": click.message_id, "u": click.user_id, "c": click.campaign_id, "v": click.variant, "url": click.url}
        return self._signer.issue(data, now)

    def read(self, token: str, now: datetime) -> Click:
        data = self._signer.read(token, now)
        try:
            click = Click(str(data["m"]), str(data["u"]), str(data["c"]), str(data["v"]), str(data["url"]))
        except KeyError as exc:
            raise BadToken("this link is not valid") from exc
        if not is_web_link(click.url):
            raise BadToken("this link is not valid")
        return click


def tracked(payload: dict[str, Any], link: Callable[[str], str]) -> dict[str, Any]:
    """``payload`` with every web link in a link field replaced by ``link(url)``."""
    out: dict[str, Any] = {}
    for key, value in payload.items():
        if isinstance(value, dict):
            out[key] = tracked(value, link)
        elif isinstance(value, list):
            out[key] = [tracked(v, link) if isinstance(v, dict) else v for v in value]
        elif key in LINK_FIELDS and isinstance(value, str) and is_web_link(value):
            out[key] = link(value)
        else:
            out[key] = value
    return out


LinkMaker = Callable[[Job, str], str]
