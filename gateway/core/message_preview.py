"""What each channel of a scenario would send for given params, locale and free text,
with the checks the request and the providers would apply (``herald preview``; pure).

Nothing is sent and no gateway is needed: the policy is loaded from its folder and the
content rendered as a delivery renders it (``render.render``). The checks are the ones
Push applies at the door (``validate.check_message``: params, free text, the content
guard on free text), the providers' content rules (``channels/checks.py``), and the
content guard over the rendered text of basic and reminder scenarios (a word the
template itself or a parameter brings in, which the door does not look at).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from channels.checks import Finding, content_findings
from gateway.core.render import content_locale, render
from gateway.core.validate import check_message
from gateway.errors import InvalidArgument
from gateway.policy.model import Policy
from gateway.policy.providers import AliyunSmsProvider
from gateway.values.claims import Content, PushInput
from gateway.values.domain import Category, Channel


@dataclass(frozen=True)
class ChannelPreview:
    channel: Channel
    provider: str
    # The locale whose block this is (a key of content.locales), or None: the default.
    content_locale: str | None
    payload: dict[str, Any]
    findings: list[Finding] = field(default_factory=list)


@dataclass(frozen=True)
class Preview:
    scenario: str
    category: Category
    policy_version: str
    locale: str
    content_locale: str | None
    # What Push would answer INVALID_ARGUMENT for (the first problem, as Push names it).
    request: list[Finding]
    channels: list[ChannelPreview]

    def count(self, level: str) -> int:
        return sum(1 for f in self.request if f.level == level) + sum(
            1 for c in self.channels for f in c.findings if f.level == level
        )


def strings(value: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """Every text of a rendered payload, with its dotted path."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from strings(item, f"{path}.{key}" if path else str(key))


def _guard(
    policy: Policy, category: Category, channel: Channel, payload: Mapping[str, Any], content: Content | None
) -> Iterator[Finding]:
    """Guard words in the rendered text of a basic or reminder message, but those of the
    request's free text (which Push refuses by itself: that is the request's error)."""
    if category is Category.MARKETING:
        return
    said = (
        set()
        if content is None
        else {*policy.content_guard.find(content.title), *policy.content_guard.find(content.body)}
    )
    why = f"{category} messages may not carry promotions"
    if channel is Channel.WECHAT_TEMPLATE:
        why += " (WeChat blocks the template interface of accounts whose templates carry them)"
    for where, text in strings(payload):
        found = [word for word in policy.content_guard.find(text) if word not in said]
        if found:
            words = ", ".join(f"'{word}'" for word in found)
            yield Finding("warning", where, f"reads as marketing ({words}): {why}")


def preview(
    policy: Policy,
    scenario_name: str,
    params: Mapping[str, str],
    content: Content | None = None,
    locale: str = "",
    channels: Sequence[Channel] = (),
) -> Preview:
    """The scenario's channels (or ``channels`` of them) rendered for ``params``,
    ``content`` and a user whose profile says ``locale``. KeyError: no such scenario."""
    scenario = policy.scenarios[scenario_name]
    request = PushInput(request_id="preview", user_id="preview", scenario=scenario_name, params=dict(params))
    if content is not None and not content.is_empty():
        request = PushInput(request.request_id, request.user_id, scenario_name, dict(params), content)
    problems: list[Finding] = []
    try:
        check_message(request, scenario, policy)
    except InvalidArgument as exc:
        problems.append(Finding("error", exc.field, f"Push would refuse the request: {exc.rule}"))
    chosen = content_locale(policy, scenario_name, locale)
    shown = []
    for channel in channels or scenario.channels:
        payload = render(policy, scenario_name, channel, params, content, locale)
        has_own = chosen is not None and scenario.content.locales[chosen].for_channel(channel) is not None
        provider = policy.channels[channel].provider if channel in policy.channels else ""
        findings = content_findings(channel, payload)
        findings.extend(_guard(policy, scenario.category, channel, payload, content))
        if channel is Channel.SMS and not payload.get("sign_name"):
            settings = policy.providers.get(provider)
            if isinstance(settings, AliyunSmsProvider):
                payload = {**payload, "sign_name": settings.sign_name}
                findings.append(Finding("note", "sign_name", f"provider {provider}'s (the block names none)"))
        shown.append(ChannelPreview(channel, provider, chosen if has_own else None, payload, findings))
    return Preview(
        scenario=scenario_name,
        category=scenario.category,
        policy_version=policy.version,
        locale=locale,
        content_locale=chosen,
        request=problems,
        channels=shown,
    )
