"""docs/policy.md documents every key the policy schema accepts.

The keys are read from the pydantic models (``gateway/policy/schema.py`` and the
models it uses), walked from ``PolicyFile`` down. A key is documented when its name is
written as code (a `span` or a fenced block) in a section of docs/policy.md whose
heading names its top-level section (``## `defaults` ``; ``## Auto-stop
(`defaults.auto_stop`)`` counts for ``defaults``).
"""

from __future__ import annotations

import re
import types
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel

from gateway.policy.schema import CapWindow, PolicyFile, TimeWindow

ROOT = Path(__file__).resolve().parent.parent.parent
DOC = ROOT / "docs" / "policy.md"
# Models written as one string in policy files ("07:30-09:30", "24h", "week"); their
# fields are how the string is parsed, not keys anyone writes.
WRITTEN_AS_TEXT: tuple[type[BaseModel], ...] = (TimeWindow, CapWindow)


def models_in(annotation: Any) -> list[type[BaseModel]]:
    """The models an annotation can hold: in an Optional, a union, a tuple, a dict's
    values, an Annotated."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    origin = get_origin(annotation)
    args = get_args(annotation)
    if origin is Annotated:
        return models_in(args[0])
    if origin is dict:
        return models_in(args[1])
    if origin in (tuple, list, Union, types.UnionType):
        return [model for arg in args if arg is not Ellipsis for model in models_in(arg)]
    return []


def keys(model: type[BaseModel], path: str = "") -> list[str]:
    """Every key under ``model``, as dotted paths (``defaults.release_spread``;
    ``providers.*.appid_env`` for a key under a map of names)."""
    out = []
    for name, field in model.model_fields.items():
        here = f"{path}.{name}" if path else name
        out.append(here)
        for inner in models_in(field.annotation):
            if inner in WRITTEN_AS_TEXT:
                continue
            mapped = get_origin(field.annotation) is dict or any(
                get_origin(a) is dict for a in get_args(field.annotation)
            )
            out.extend(keys(inner, f"{here}.*" if mapped else here))
    return sorted(set(out))


def sections() -> dict[str, str]:
    """Each top-level section's documentation: the code in every part of the page
    whose heading names it."""
    text = DOC.read_text(encoding="utf-8")
    parts = re.split(r"^(##+ .*)$", text, flags=re.MULTILINE)
    out: dict[str, str] = {}
    for heading, body in zip(parts[1::2], parts[2::2], strict=True):
        code = " ".join(re.findall(r"```.*?```|`[^`\n]+`", heading + body, flags=re.DOTALL))
        for named in re.findall(r"`([a-z_]+)(?:\.[a-z_.]+)?`", heading):
            out[named] = out.get(named, "") + " " + code
    return out


def test_the_walk_finds_nested_keys() -> None:
    found = keys(PolicyFile)
    for key in (
        "defaults.release_spread",
        "defaults.max_hold",
        "defaults.auto_stop.min_sends",
        "scenarios.*.content.wechat_template.miniprogram.pagepath",
        "categories.*.caps.per_tier",
        "providers.*.appid_env",
        "providers.*.receipt_token_env",
        "audiences.*.expression",
        "wechat_events.tags_from_keyword.reply",
        "wechat_events.opt_in_reply",
        "channels.*.cs_windows.*.messages",
    ):
        assert key in found, key
    assert "defaults.send_windows.start" not in found  # written as "07:30-09:30"


def test_every_schema_key_is_in_policy_md() -> None:
    documented = sections()
    missing = []
    for key in keys(PolicyFile):
        parts = key.split(".")
        top, leaf = parts[0], parts[-1]
        if leaf == "*":
            continue
        code = documented.get(top)
        if code is None:
            missing.append(f"{key} (no section of policy.md is headed `{top}`)")
        elif len(parts) > 1 and not re.search(rf"(?<![\w-]){re.escape(leaf)}(?![\w-])", code):
            missing.append(key)
    assert not missing, "keys of the policy schema that docs/policy.md does not mention:\n" + "\n".join(missing)
