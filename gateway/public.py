"""The routes people and providers reach from the internet: the one-click unsubscribe
URL (RFC 8058) and, beside it, the provider webhooks. Served on their own listener
when ``public_listen`` is set, else on the admin listener (loopback by default)."""

from __future__ import annotations

import html
import secrets
from datetime import timedelta

from aiohttp import web

from gateway.autostop import AutoStop
from gateway.clock import Clock
from gateway.core.unsubscribes import count_after_email
from gateway.core.users import Users
from gateway.errors import HeraldError, NotFound
from gateway.links import ClickTokens
from gateway.logs import get_logger
from gateway.metrics import Metrics
from gateway.policy.holder import PolicyHolder
from gateway.signing import BadToken
from gateway.store import keys
from gateway.store.base import Store
from gateway.unsubscribe import UnsubscribeTokens
from gateway.values.campaigns import funnel_field

log = get_logger(__name__)


async def unsubscribe_key(store: Store, configured: str) -> bytes:
    """The signing key: HERALD_UNSUBSCRIBE_KEY when set, else one made once and shared
    by every replica through the store."""
    if configured:
        return configured.encode()
    await store.shared_put(keys.UNSUBSCRIBE_KEY, secrets.token_hex(32), timedelta(days=3650), only_if_absent=True)
    key = await store.shared_get(keys.UNSUBSCRIBE_KEY)
    assert key is not None
    return key.encode()


def _page(title: str, text: str, status: int = 200, form: str = "") -> web.Response:
    body = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head>"
        f"<body><h1>{html.escape(title)}</h1><p>{html.escape(text)}</p>{form}</body></html>"
    )
    return web.Response(text=body, status=status, content_type="text/html")


class Unsubscribes:
    def __init__(
        self,
        tokens: UnsubscribeTokens,
        users: Users,
        store: Store,
        policies: PolicyHolder,
        clock: Clock,
        metrics: Metrics,
        auto_stop: AutoStop,
    ) -> None:
        self._auto_stop = auto_stop
        self._tokens = tokens
        self._users = users
        self._store = store
        self._policies = policies
        self._clock = clock
        self._metrics = metrics

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/unsubscribe/{token}", self.confirm)
        app.router.add_post("/unsubscribe/{token}", self.one_click)

    async def confirm(self, request: web.Request) -> web.Response:
        """A GET never unsubscribes (mail scanners follow links): it offers the button."""
        try:
            self._tokens.read(request.match_info["token"], self._clock.now())
        except BadToken as exc:
            return _page("Link not valid", str(exc), 400)
        form = "<form method='post'><button name='List-Unsubscribe' value='One-Click'>Unsubscribe</button></form>"
        return _page("Unsubscribe", "Stop receiving these emails?", form=form)

    async def one_click(self, request: web.Request) -> web.Response:
        try:
            what = self._tokens.read(request.match_info["token"], self._clock.now())
        except BadToken as exc:
            return _page("Link not valid", str(exc), 400)
        try:
            await self._users.set_opt_out(what.user_id, what.category, what.channel, True, "email-one-click")
        except NotFound:
            return _page("Unsubscribed", "You will not receive these emails any more.")
        except HeraldError as exc:
            log.error("unsubscribe_failed", error=exc.message)
            return _page("Try again", "We could not record this just now; please try again in a minute.", 503)
        self._metrics.unsubscribes.labels(str(what.category), str(what.channel)).inc()
        if what.scenario:
            await self._auto_stop.record_for(what.category, what.scenario, what.campaign_id, True)
        if what.campaign_id:
            window = self._policies.current.defaults.idempotency_window
            await count_after_email(self._store, what.campaign_id, what.user_id, window)
        log.info("unsubscribed", user_id=what.user_id, category=str(what.category), channel=str(what.channel))
        return _page("Unsubscribed", "You will not receive these emails any more.")


class Clicks:
    """``GET /c/<token>``: a campaign link clicked. Counted once per user and message,
    remembered for conversion attribution, then redirected to the one URL the token
    was signed for. A store fault never breaks the user's click: it is logged and the
    user still goes on."""

    def __init__(self, tokens: ClickTokens, store: Store, policies: PolicyHolder, clock: Clock) -> None:
        self._tokens = tokens
        self._store = store
        self._policies = policies
        self._clock = clock

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/c/{token}", self.click)

    async def click(self, request: web.Request) -> web.Response:
        now = self._clock.now()
        try:
            click = self._tokens.read(request.match_info["token"], now)
        except BadToken as exc:
            return _page("Link not valid", str(exc), 400)
        if request.method == "GET" and not _is_prefetch(request):
            try:
                field = funnel_field(click.variant, "clicked")
                await self._store.add_funnel(click.user_id, click.campaign_id, field, f"click:{click.message_id}")
                window = self._policies.current.defaults.attribution_window
                await self._store.shared_put(
                    keys.clicked(click.message_id), now.isoformat(), window, only_if_absent=True
                )
            except HeraldError as exc:
                log.error("click_not_counted", campaign_id=click.campaign_id, error=exc.message)
        raise web.HTTPFound(click.url)


def _is_prefetch(request: web.Request) -> bool:
    """Link previews and prefetches are not the user's click."""
    purpose = request.headers.get("Purpose", "") + request.headers.get("Sec-Purpose", "")
    return "prefetch" in purpose.lower()
