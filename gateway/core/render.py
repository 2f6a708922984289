"""Fill a scenario's per-channel content with the claim's params (pure), in the user's
locale when the scenario has content for it.

A content block is compiled once per policy version (``template``): each text split
at its placeholders, so filling it for a delivery is a join, not a regex pass.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.core.locales import pick
from gateway.policy.model import PLACEHOLDER_RE, Policy
from gateway.values.claims import Content
from gateway.values.domain import Channel

# A compiled value: a text as (literal, name, literal, name, ..., literal), a block as
# its compiled items, anything else as itself.
Compiled = Any


class _Text:
    __slots__ = ("parts",)

    def __init__(self, parts: list[str]) -> None:
        self.parts = parts


class _Block:
    __slots__ = ("items",)

    def __init__(self, items: list[tuple[str, Compiled]]) -> None:
        self.items = items


def _compile(value: Any) -> Compiled:
    if isinstance(value, str):
        parts = PLACEHOLDER_RE.split(value)
        return value.strip() if len(parts) == 1 else _Text(parts)
    if isinstance(value, dict):
        return _Block([(key, _compile(item)) for key, item in value.items()])
    return value


def _fill(compiled: Compiled, values: Mapping[str, str]) -> Any:
    if isinstance(compiled, _Text):
        # Placeholders were checked against the scenario at policy load; an optional
        # parameter the request left out renders as empty text.
        parts = compiled.parts
        return "".join([part if i % 2 == 0 else values.get(part, "") for i, part in enumerate(parts)]).strip()
    if isinstance(compiled, _Block):
        return {key: _fill(item, values) for key, item in compiled.items}
    return compiled


def _values(params: Mapping[str, str], content: Content | None) -> dict[str, str]:
    values = dict(params)
    values["content.title"] = content.title if content else ""
    values["content.body"] = content.body if content else ""
    values["content.url"] = content.url if content else ""
    return values


def content_locale(policy: Policy, scenario: str, locale: str) -> str | None:
    """The key of the scenario's ``content.locales`` that a user's ``locale`` picks (the
    tag as the policy writes it), or None: the default content."""
    if not locale:
        return None
    written: dict[str, str] = policy.derived(
        ("locales", scenario), lambda: {tag.lower(): tag for tag in policy.scenarios[scenario].content.locales}
    )
    return pick(written, locale) if written else None


def template(policy: Policy, scenario: str, channel: Channel, locale: str | None = None) -> Compiled:
    """A scenario's content block for a channel, in one of its ``locales`` (a key, as
    ``content_locale`` gives it) or the default, compiled once per policy."""

    def build() -> Compiled:
        block = policy.scenarios[scenario].content.block(channel, locale)
        if block is None:
            raise KeyError(f"scenario {scenario} has no content for {channel}")
        return _compile(block.model_dump(exclude_none=True))

    return policy.derived(("template", scenario, channel, locale), build)


def render(
    policy: Policy,
    scenario: str,
    channel: Channel,
    params: Mapping[str, str],
    content: Content | None,
    locale: str = "",
) -> dict[str, Any]:
    """The channel's content block with every ``{placeholder}`` filled: the block of the
    content the user's ``locale`` picks, or the default."""
    chosen = content_locale(policy, scenario, locale)
    filled: dict[str, Any] = _fill(template(policy, scenario, channel, chosen), _values(params, content))
    return filled
