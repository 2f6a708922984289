"""Fill a scenario's per-channel content with the claim's params (pure)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.policy.model import PLACEHOLDER_RE, Policy
from gateway.values.claims import Content
from gateway.values.domain import Channel


def _values(params: Mapping[str, str], content: Content | None) -> dict[str, str]:
    values = dict(params)
    values["content.title"] = content.title if content else ""
    values["content.body"] = content.body if content else ""
    values["content.url"] = content.url if content else ""
    return values


def _fill(value: Any, values: Mapping[str, str]) -> Any:
    if isinstance(value, str):
        # Placeholders were checked against the scenario at policy load; an optional
        # parameter the request left out renders as empty text.
        return PLACEHOLDER_RE.sub(lambda m: values.get(m.group(1), ""), value).strip()
    if isinstance(value, dict):
        return {key: _fill(item, values) for key, item in value.items()}
    return value


def template(policy: Policy, scenario: str, channel: Channel) -> dict[str, Any]:
    """A scenario's content block for a channel as plain data, made once per policy."""

    def build() -> dict[str, Any]:
        block = policy.scenarios[scenario].content.for_channel(channel)
        if block is None:
            raise KeyError(f"scenario {scenario} has no content for {channel}")
        dumped: dict[str, Any] = block.model_dump(exclude_none=True)
        return dumped

    return policy.derived(("template", scenario, channel), build)


def render(
    policy: Policy, scenario: str, channel: Channel, params: Mapping[str, str], content: Content | None
) -> dict[str, Any]:
    """The channel's content block with every ``{placeholder}`` filled."""
    filled: dict[str, Any] = _fill(template(policy, scenario, channel), _values(params, content))
    return filled
