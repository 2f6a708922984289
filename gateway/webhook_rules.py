"""The ``wechat_events`` rules carried out for one WeChat callback's user: tags added,
marketing opted out of (or back into) on the WeChat channels, and the text of the
passive reply.

Logs name the user by id and the rules by their path in policy; never the message,
the scene or the openid, and the tags only by count.
"""

from __future__ import annotations

from gateway.clock import Clock
from gateway.core.unsubscribes import count_after_wechat
from gateway.core.users import Users
from gateway.core.wechat_rules import OPT_OUT_CHANNELS, OPT_OUT_SOURCE, Actions
from gateway.logs import get_logger
from gateway.metrics import Metrics
from gateway.policy.holder import PolicyHolder
from gateway.store.base import Store
from gateway.values.domain import Category
from gateway.values.profiles import MAX_TAGS, UserProfile

log = get_logger(__name__)


class WebhookRules:
    def __init__(self, users: Users, store: Store, policies: PolicyHolder, clock: Clock, metrics: Metrics) -> None:
        self._users = users
        self._store = store
        self._policies = policies
        self._clock = clock
        self._metrics = metrics

    async def apply(self, profile: UserProfile, actions: Actions) -> str | None:
        """Carry out ``actions`` for the user; the reply to answer with, if any."""
        for where in actions.bad_tags:
            # Policy text only: the scene that made the tag may be anything.
            log.warning("wechat_rule_bad_tag", user_id=profile.user_id, rule=where)
            self._metrics.wechat_rules.labels("bad_tag").inc()
        if actions.tags:
            profile, added = await self._users.add_tags(profile, actions.tags)
            full = sum(1 for tag in actions.tags if tag not in profile.tags) if len(profile.tags) >= MAX_TAGS else 0
            log.info("wechat_tags_added", user_id=profile.user_id, count=len(added), rules=list(actions.rules))
            if added:
                self._metrics.wechat_rules.labels("tagged").inc()
            if full:
                log.warning("wechat_tags_profile_full", user_id=profile.user_id, count=full)
                self._metrics.wechat_rules.labels("profile_full").inc(full)
        if actions.opt_out is not None:
            for channel in OPT_OUT_CHANNELS:
                await self._users.set_opt_out(
                    profile.user_id, Category.MARKETING, channel, actions.opt_out, OPT_OUT_SOURCE
                )
            action = "opted_out" if actions.opt_out else "opted_in"
            log.info(f"wechat_{action}", user_id=profile.user_id, category=str(Category.MARKETING))
            self._metrics.wechat_rules.labels(action).inc()
            if actions.opt_out:
                # The campaign whose WeChat message the user most likely answers.
                since = self._clock.now() - self._policies.current.defaults.attribution_window
                await count_after_wechat(self._store, profile.user_id, OPT_OUT_CHANNELS, since)
        return actions.reply
