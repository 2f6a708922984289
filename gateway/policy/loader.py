"""Load a folder of policy files into one validated ``Policy``, or say every fault.

Faults name the file, the path inside it and the problem, e.g.
``policies/categories.yaml: categories.marketing.caps[1].window: unknown unit 'dya'``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from gateway.errors import PolicyError, PolicyProblem
from gateway.policy.model import CONTENT_PLACEHOLDERS, PLACEHOLDER_RE, ContentGuard, Policy
from gateway.policy.schema import Defaults, PolicyFile, Scenario
from gateway.values.domain import Category, Channel

_MERGED_SECTIONS = ("content_guard", "business_units", "scenarios", "categories", "channels", "providers")
_SINGLE_SECTIONS = ("defaults", "tiers")


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key written twice in one mapping (PyYAML keeps the last)."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"key '{key}' is written twice", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,
)


def policy_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())


def content_version(directory: Path, files: Iterable[Path]) -> str:
    """A short content hash of the set: names and bytes of every file."""
    digest = hashlib.sha256()
    for path in files:
        digest.update(str(path.relative_to(directory)).encode())
        digest.update(b"\0")
        digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()[:12]


def format_loc(loc: Iterable[Any]) -> str:
    """``('scenarios', 'order.paid', 'channels', 2)`` -> ``scenarios['order.paid'].channels[2]``."""
    out = ""
    for part in loc:
        if part == "[key]":
            out += " (the key)"
        elif isinstance(part, bool):
            out += f".{str(part).lower()}"
        elif isinstance(part, int):
            out += f"[{part}]"
        elif "." in str(part) or " " in str(part):
            out += f"['{part}']"
        else:
            out += f".{part}" if out else str(part)
    return out


def _problems_from_validation(file: str, error: ValidationError) -> list[PolicyProblem]:
    problems = []
    for item in error.errors():
        loc = list(item["loc"])
        message = str(item["msg"])
        if item["type"] == "extra_forbidden":
            key = loc.pop() if loc else "?"
            message = f"unknown key '{key}'; check its spelling and place (docs/policy.md lists every key)"
        elif item["type"] == "missing":
            message = "required key is missing"
        elif message.startswith("Value error, "):
            message = message[len("Value error, ") :]
        elif message.startswith("Assertion failed, "):
            message = message[len("Assertion failed, ") :]
        if isinstance(item.get("input"), bool) or any(isinstance(p, bool) for p in loc):
            message += " (YAML reads yes/no/on/off unquoted as true/false: quote it)"
        problems.append(PolicyProblem(file, format_loc(loc), message))
    return problems


def _read_file(path: Path, shown: str) -> tuple[PolicyFile | None, list[PolicyProblem]]:
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
    except UnicodeDecodeError:
        return None, [PolicyProblem(shown, "", "is not UTF-8 text")]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        return None, [PolicyProblem(shown, where, f"not valid YAML: {problem}")]
    if raw is None:
        return None, [PolicyProblem(shown, "", "is empty; remove it or add a section")]
    if not isinstance(raw, dict):
        return None, [PolicyProblem(shown, "", "must be a mapping of sections (scenarios:, categories:, ...)")]
    try:
        return PolicyFile.model_validate(raw), []
    except ValidationError as exc:
        return None, _problems_from_validation(shown, exc)


def load_policy(directory: Path | str, *, now: datetime | None = None) -> Policy:
    """Read, validate and merge every ``*.yaml`` under ``directory``.

    Raises ``PolicyError`` with every problem found, not just the first.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise PolicyError([PolicyProblem(str(directory), "", "is not a directory of policy files")])
    files = policy_files(directory)
    if not files:
        raise PolicyError([PolicyProblem(str(directory), "", "holds no .yaml policy files")])

    problems: list[PolicyProblem] = []
    merged: dict[str, dict[Any, Any]] = {name: {} for name in _MERGED_SECTIONS}
    origin: dict[tuple[str, Any], str] = {}
    singles: dict[str, tuple[Any, str]] = {}
    for path in files:
        shown = str(directory / path.relative_to(directory))
        parsed, file_problems = _read_file(path, shown)
        problems.extend(file_problems)
        if parsed is None:
            continue
        for section in _MERGED_SECTIONS:
            for key, value in (getattr(parsed, section) or {}).items():
                if (section, key) in origin:
                    problems.append(
                        PolicyProblem(shown, format_loc([section, key]), f"already defined in {origin[section, key]}")
                    )
                    continue
                origin[section, key] = shown
                merged[section][key] = value
        for section in _SINGLE_SECTIONS:
            value = getattr(parsed, section)
            if value is None:
                continue
            if section in singles:
                problems.append(PolicyProblem(shown, section, f"already defined in {singles[section][1]}"))
                continue
            singles[section] = (value, shown)

    if problems:
        raise PolicyError(problems)

    def file_of(section: str, key: Any = None) -> str:
        if key is None:
            return singles[section][1] if section in singles else str(directory)
        return origin.get((section, key), str(directory))

    problems.extend(_check_required(merged, singles, str(directory)))
    if problems:
        raise PolicyError(problems)

    policy = Policy(
        version=content_version(directory, files),
        loaded_at=now or datetime.now(UTC),
        files=tuple(str(p.relative_to(directory)) for p in files),
        defaults=singles["defaults"][0] if "defaults" in singles else Defaults(),
        content_guard=ContentGuard.build(merged["content_guard"]),
        business_units=merged["business_units"],
        scenarios=merged["scenarios"],
        categories=merged["categories"],
        tiers=singles["tiers"][0],
        channels=merged["channels"],
        providers=merged["providers"],
    )
    problems.extend(cross_check(policy, file_of))
    if problems:
        raise PolicyError(problems)
    return policy


def _check_required(
    merged: Mapping[str, Mapping[Any, Any]], singles: Mapping[str, Any], directory: str
) -> list[PolicyProblem]:
    problems = []
    for section in ("business_units", "scenarios", "categories", "channels", "providers"):
        if not merged[section]:
            problems.append(PolicyProblem(directory, section, "no file defines this section; it is required"))
    if "tiers" not in singles:
        problems.append(PolicyProblem(directory, "tiers", "no file defines the RFM tiers; it is required"))
    for category in Category:
        if merged["categories"] and category not in merged["categories"]:
            problems.append(PolicyProblem(directory, f"categories.{category}", "every category needs a policy"))
    return problems


def _placeholders(value: Any) -> Iterable[tuple[list[Any], str]]:
    """Every ``{name}`` in the strings of a content block, with its path."""
    if isinstance(value, str):
        for match in PLACEHOLDER_RE.finditer(value):
            yield [], match.group(1)
    elif isinstance(value, dict):
        for key, item in value.items():
            for loc, name in _placeholders(item):
                yield [key, *loc], name
    elif hasattr(value, "model_dump"):
        yield from _placeholders(value.model_dump(exclude_none=True))


def _check_scenario(policy: Policy, name: str, scenario: Scenario, file: str) -> list[PolicyProblem]:
    base = ["scenarios", name]
    problems = []

    def add(loc: list[Any], problem: str) -> None:
        problems.append(PolicyProblem(file, format_loc(base + loc), problem))

    overlap = set(scenario.params) & set(scenario.optional_params)
    if overlap:
        add(["optional_params"], f"also listed in params: {', '.join(sorted(overlap))}")
    if scenario.category is Category.MARKETING and Channel.WECHAT_TEMPLATE in scenario.channels:
        add(
            ["channels"],
            "marketing may never use WECHAT_TEMPLATE: WeChat blocks the account's template "
            "interface for marketing; use WECHAT_CS or WECHAT_MASS",
        )
    if scenario.category is not Category.MARKETING and Channel.WECHAT_MASS in scenario.channels:
        add(["channels"], "WECHAT_MASS is for marketing only")
    for index, channel in enumerate(scenario.channels):
        if scenario.content.for_channel(channel) is None:
            add(["content"], f"no '{channel.content_key}' block for channel {channel} (channels[{index}])")
        if channel not in policy.channels:
            add(["channels", index], f"channel {channel} has no entry in the channels section")
    for channel in Channel:
        if scenario.content.for_channel(channel) is not None and channel not in scenario.channels:
            add(
                ["content", channel.content_key],
                f"content for {channel}, which is not in channels; add it there or remove the block",
            )
    declared = set(scenario.params) | set(scenario.optional_params)
    if scenario.free_text:
        declared |= CONTENT_PLACEHOLDERS
    for loc, placeholder in _placeholders(scenario.content):
        if placeholder not in declared:
            hint = (
                "set free_text: true to use the request's content"
                if placeholder in CONTENT_PLACEHOLDERS
                else "declare it in params or optional_params"
            )
            add(["content", *loc], f"placeholder '{{{placeholder}}}' is not declared; {hint}")
    for index, tier in enumerate(scenario.target_tiers):
        if tier not in policy.tiers.names:
            add(["target_tiers", index], f"unknown tier '{tier}'; tiers are {', '.join(sorted(policy.tiers.names))}")
    return problems


def cross_check(policy: Policy, file_of: Any) -> list[PolicyProblem]:
    """What no single file can check: names that refer to each other."""
    problems: list[PolicyProblem] = []
    for bu_name, unit in policy.business_units.items():
        for index, granted in enumerate(unit.scenarios):
            if granted not in policy.scenarios:
                problems.append(
                    PolicyProblem(
                        file_of("business_units", bu_name),
                        format_loc(["business_units", bu_name, "scenarios", index]),
                        f"unknown scenario '{granted}'",
                    )
                )
    for name, scenario in policy.scenarios.items():
        problems.extend(_check_scenario(policy, name, scenario, file_of("scenarios", name)))
    for category, cat_policy in policy.categories.items():
        for index, cap in enumerate(cat_policy.caps):
            loc = ["categories", str(category), "caps", index]
            file = file_of("categories", category)
            for tier in cap.per_tier:
                if tier not in policy.tiers.names:
                    problems.append(PolicyProblem(file, format_loc([*loc, "per_tier"]), f"unknown tier '{tier}'"))
            if cap.bu is not None and cap.bu not in policy.business_units:
                problems.append(PolicyProblem(file, format_loc([*loc, "bu"]), f"unknown business unit '{cap.bu}'"))
            if cap.channel is not None and cap.channel not in policy.channels:
                problems.append(
                    PolicyProblem(file, format_loc([*loc, "channel"]), f"channel {cap.channel} is not configured")
                )
    basic = policy.categories[Category.BASIC]
    if basic.arbitrate:
        problems.append(
            PolicyProblem(
                file_of("categories", Category.BASIC),
                "categories.basic.arbitrate",
                "basic messages never wait for a send window or compete; remove it",
            )
        )
    if basic.quiet_hours.mode == "drop":
        problems.append(
            PolicyProblem(
                file_of("categories", Category.BASIC),
                "categories.basic.quiet_hours.mode",
                "basic messages are never dropped for quiet hours; use exempt or defer",
            )
        )
    if any(policy.arbitrates(c) for c in Category) and not policy.defaults.send_windows:
        problems.append(
            PolicyProblem(
                file_of("defaults"),
                "defaults.send_windows",
                'a category arbitrates, so send windows are required (e.g. ["07:30-09:30", "18:00-22:00"])',
            )
        )
    for channel, chan_policy in policy.channels.items():
        if chan_policy.provider not in policy.providers:
            problems.append(
                PolicyProblem(
                    file_of("channels", channel),
                    format_loc(["channels", str(channel), "provider"]),
                    f"unknown provider '{chan_policy.provider}'; providers are {', '.join(sorted(policy.providers))}",
                )
            )
        if chan_policy.cs_windows and channel is not Channel.WECHAT_CS:
            problems.append(
                PolicyProblem(
                    file_of("channels", channel),
                    format_loc(["channels", str(channel), "cs_windows"]),
                    "cs_windows belongs to WECHAT_CS only",
                )
            )
    return problems
