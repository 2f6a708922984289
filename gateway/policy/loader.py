"""Load a folder of policy files into one validated ``Policy``, or say every fault.

Faults name the file, the path inside it and the problem, e.g.
``policies/categories.yaml: categories.marketing.caps[1].window: unknown unit 'dya'``.

One run finds every fault. Each entry of a merged section (a business unit, a scenario,
a category, a channel, a provider, a content-guard language, an audience) and each
single section (``defaults``, ``tiers``) is validated on its own, so one bad entry hides
nothing else. An audience's expression is parsed with its entry; its tier names are
checked against the merged tiers.
An entry that fails is remembered by name as defined but invalid; the required-section
and cross-reference checks then run over the entries that did validate, and a name that
is defined but invalid (or that a file we could not read may define) is never called
unknown or missing. Faults are given sorted by file, then in file order.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import TypeAdapter, ValidationError

from gateway.core.audience import AudienceError, parse
from gateway.errors import PolicyError, PolicyProblem
from gateway.policy.model import CONTENT_PLACEHOLDERS, PLACEHOLDER_RE, ContentGuard, Policy
from gateway.policy.schema import AudienceDefinition, CategoryPolicy, Defaults, PolicyFile, Scenario, TierPolicy
from gateway.policy.wechat_events import WechatEvents, overlaps
from gateway.values.domain import Category, Channel

_MERGED_SECTIONS = (
    "content_guard",
    "business_units",
    "scenarios",
    "categories",
    "channels",
    "providers",
    "audiences",
)
_SINGLE_SECTIONS = ("defaults", "tiers", "wechat_events")
_REQUIRED_SECTIONS = ("business_units", "scenarios", "categories", "channels", "providers")

# The type of a merged section's names (str, Category, Channel), read off the schema, so
# the name of an entry that fails validation can still be remembered as the schema reads it.
_NAME_OF: dict[str, TypeAdapter[Any]] = {
    section: TypeAdapter(get_args(get_args(PolicyFile.model_fields[section].annotation)[0])[0])
    for section in _MERGED_SECTIONS
}

# Where something is in a file: (line, column), both from 0.
_Position = tuple[int, int]
# A fault before it is placed: file, path inside it, problem.
_Fault = tuple[str, list[Any], str]


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


class _Report:
    """Every fault found, each with where it is, given back sorted by file and then in
    file order (files in the order they were read; faults of the whole set first)."""

    def __init__(self) -> None:
        self._rank: dict[str, int] = {}
        self._positions: dict[str, dict[tuple[Any, ...], _Position]] = {}
        self._found: list[tuple[tuple[int, int, int], PolicyProblem]] = []

    def file(self, file: str) -> None:
        """``file`` is read next: its faults come after those of the files before it."""
        self._rank[file] = len(self._rank)

    def place(self, file: str, positions: dict[tuple[Any, ...], _Position]) -> None:
        """Where each path of ``file`` is written, to put its faults in file order."""
        self._positions[file] = positions

    def add(self, file: str, loc: list[Any], problem: str, *, at: list[Any] | None = None) -> None:
        """A fault at ``loc`` (placed at ``at`` when that is more precise)."""
        line, column = self._where(file, loc if at is None else at)
        self._found.append(((self._rank.get(file, -1), line, column), PolicyProblem(file, format_loc(loc), problem)))

    def add_at(self, file: str, where: str, problem: str, position: _Position) -> None:
        """A fault whose place is already written out (``line 3, column 5``)."""
        self._found.append(((self._rank.get(file, -1), *position), PolicyProblem(file, where, problem)))

    def __bool__(self) -> bool:
        return bool(self._found)

    def problems(self) -> list[PolicyProblem]:
        return [problem for _, problem in sorted(self._found, key=lambda item: item[0])]

    def _where(self, file: str, loc: list[Any]) -> _Position:
        """The position of the deepest part of ``loc`` written in the file."""
        positions = self._positions.get(file, {})
        path = tuple(loc[: loc.index("[key]")] if "[key]" in loc else loc)
        for end in range(len(path), 0, -1):
            found = positions.get(path[:end])
            if found is not None:
                return found
        return (0, 0)


def _positions(loader: _UniqueKeyLoader, node: yaml.Node) -> dict[tuple[Any, ...], _Position]:
    """Where each key and list item of a document starts, by its path of keys and indexes."""
    out: dict[tuple[Any, ...], _Position] = {}

    def walk(node: yaml.Node, path: tuple[Any, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                try:
                    key = loader.construct_object(key_node, deep=True)
                    here = (*path, key)
                    out.setdefault(here, (key_node.start_mark.line, key_node.start_mark.column))
                except (yaml.YAMLError, TypeError):  # a key no path can name (a list, say)
                    continue
                walk(value_node, here)
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                here = (*path, index)
                out.setdefault(here, (item.start_mark.line, item.start_mark.column))
                walk(item, here)

    walk(node, ())
    return out


def _read_yaml(path: Path, shown: str, report: _Report) -> tuple[dict[Any, Any] | None, bool]:
    """The file's top-level mapping, or None; and whether its content is known (False
    when it could not be read: it might define any name)."""
    report.file(shown)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        report.add_at(shown, "", "is not UTF-8 text", (0, 0))
        return None, False
    loader = _UniqueKeyLoader(text)
    try:
        node = loader.get_single_node()
        raw = None
        if node is not None:
            raw = loader.construct_document(node)
            report.place(shown, _positions(loader, node))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        report.add_at(shown, where, f"not valid YAML: {problem}", (mark.line, mark.column) if mark else (0, 0))
        return None, False
    finally:
        loader.dispose()
    if raw is None:
        report.add(shown, [], "is empty; remove it or add a section")
        return None, True
    if not isinstance(raw, dict):
        report.add(shown, [], "must be a mapping of sections (scenarios:, categories:, ...)")
        return None, False
    return raw, True


def _add_validation(report: _Report, file: str, error: ValidationError) -> None:
    for item in error.errors():
        loc = list(item["loc"])
        at = list(loc)
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
        report.add(file, loc, message, at=at)


def _validate(report: _Report, file: str, part: dict[Any, Any]) -> PolicyFile | None:
    """``part`` of a file (one section, or one entry of a merged section) checked against
    the whole file's schema, so every fault reads as if the file had been checked at once."""
    try:
        return PolicyFile.model_validate(part)
    except ValidationError as exc:
        _add_validation(report, file, exc)
        return None


@dataclass
class _Sections:
    """The files merged: the entries that validated, and what is known of the rest."""

    valid: dict[str, dict[Any, Any]] = field(default_factory=lambda: {s: {} for s in _MERGED_SECTIONS})
    # Names whose entry is written but failed validation, by section.
    invalid: dict[str, set[Any]] = field(default_factory=lambda: {s: set() for s in _MERGED_SECTIONS})
    # Sections holding an entry whose name could not be read (or that are not a mapping
    # at all): any name may be meant there.
    unreadable: set[str] = field(default_factory=set)
    # A file could not be read, or holds a section we do not know: any name may be
    # defined in it, so nothing is called unknown or missing.
    unknown_content: bool = False
    origin: dict[tuple[str, Any], str] = field(default_factory=dict)
    singles: dict[str, Any] = field(default_factory=dict)  # single sections that validated
    single_files: dict[str, str] = field(default_factory=dict)  # every single section written

    def defined(self, section: str, name: Any) -> bool:
        """Whether ``name`` is (or may be) written in ``section``, valid or not."""
        return (
            name in self.valid[section]
            or name in self.invalid[section]
            or section in self.unreadable
            or self.unknown_content
        )

    def written(self, section: str) -> bool:
        """Whether any file writes ``section`` (or may, for all we could read)."""
        if section in _SINGLE_SECTIONS:
            return section in self.single_files or self.unknown_content
        return bool(self.valid[section] or self.invalid[section]) or section in self.unreadable or self.unknown_content

    def names(self, section: str) -> list[str]:
        return sorted(str(name) for name in {*self.valid[section], *self.invalid[section]})

    @property
    def tiers(self) -> TierPolicy | None:
        """The tiers, when they are written and valid."""
        tiers: TierPolicy | None = self.singles.get("tiers")
        return tiers

    @property
    def defaults(self) -> Defaults | None:
        """The defaults (those of the schema when no file writes them); None when they
        are written but invalid, or may be in a file we could not read."""
        if "defaults" in self.singles:
            defaults: Defaults = self.singles["defaults"]
            return defaults
        return None if self.written("defaults") else Defaults()

    def file_of(self, section: str, key: Any = None, *, default: str) -> str:
        if key is None:
            return self.single_files.get(section, default)
        return self.origin.get((section, key), default)


def _merge_file(raw: dict[Any, Any], shown: str, sections: _Sections, report: _Report) -> None:
    """Validate one file's sections, entry by entry, into ``sections``."""
    for section, value in raw.items():
        if section in _MERGED_SECTIONS and isinstance(value, dict):
            for key, entry in value.items():
                _merge_entry(section, key, entry, shown, sections, report)
            continue
        parsed = _validate(report, shown, {section: value})
        if section in _MERGED_SECTIONS:
            if parsed is None:
                sections.unreadable.add(section)
            continue
        if section not in _SINGLE_SECTIONS:
            sections.unknown_content = True  # an unknown section: it may hold any name
            continue
        if value is None:
            continue
        if section in sections.single_files:
            report.add(shown, [section], f"already defined in {sections.single_files[section]}")
            continue
        sections.single_files[section] = shown
        if parsed is not None:
            sections.singles[section] = getattr(parsed, section)


def _merge_entry(section: str, key: Any, entry: Any, shown: str, sections: _Sections, report: _Report) -> None:
    parsed = _validate(report, shown, {section: {key: entry}})
    if parsed is not None:
        ((name, value),) = getattr(parsed, section).items()
    else:
        try:
            name = _NAME_OF[section].validate_python(key)
        except ValidationError:  # the name itself is wrong (reported): any name may be meant
            sections.unreadable.add(section)
            return
    if (section, name) in sections.origin:
        report.add(shown, [section, key], f"already defined in {sections.origin[section, name]}")
        return
    sections.origin[section, name] = shown
    if parsed is not None:
        sections.valid[section][name] = value
    else:
        sections.invalid[section].add(name)


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

    report = _Report()
    sections = _Sections()
    for path in files:
        shown = str(directory / path.relative_to(directory))
        raw, known = _read_yaml(path, shown, report)
        if not known:
            sections.unknown_content = True
        if raw is not None:
            _merge_file(raw, shown, sections, report)

    for file, loc, problem in (
        *_check_required(sections, str(directory)),
        *cross_check(sections, str(directory)),
    ):
        report.add(file, loc, problem)
    if report:
        raise PolicyError(report.problems())

    merged = sections.valid
    return Policy(
        version=content_version(directory, files),
        loaded_at=now or datetime.now(UTC),
        files=tuple(str(p.relative_to(directory)) for p in files),
        defaults=sections.singles.get("defaults", Defaults()),
        content_guard=ContentGuard.build(merged["content_guard"]),
        business_units=merged["business_units"],
        scenarios=merged["scenarios"],
        categories=merged["categories"],
        tiers=sections.singles["tiers"],
        channels=merged["channels"],
        providers=merged["providers"],
        audiences=merged["audiences"],
        wechat_events=sections.singles.get("wechat_events") or WechatEvents(),
    )


def _check_required(sections: _Sections, directory: str) -> Iterator[_Fault]:
    for section in _REQUIRED_SECTIONS:
        if not sections.written(section):
            yield directory, [section], "no file defines this section; it is required"
    if not sections.written("tiers"):
        yield directory, ["tiers"], "no file defines the RFM tiers; it is required"
    for category in Category:
        if sections.written("categories") and not sections.defined("categories", category):
            yield directory, ["categories", category], "every category needs a policy"


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


def _check_scenario(sections: _Sections, name: str, scenario: Scenario, file: str) -> Iterator[_Fault]:
    base = ["scenarios", name]

    overlap = set(scenario.params) & set(scenario.optional_params)
    if overlap:
        yield file, [*base, "optional_params"], f"also listed in params: {', '.join(sorted(overlap))}"
    if scenario.category is Category.MARKETING and Channel.WECHAT_TEMPLATE in scenario.channels:
        yield (
            file,
            [*base, "channels"],
            "marketing may never use WECHAT_TEMPLATE: WeChat blocks the account's template "
            "interface for marketing; use WECHAT_CS or WECHAT_MASS",
        )
    if scenario.category is not Category.MARKETING and Channel.WECHAT_MASS in scenario.channels:
        yield file, [*base, "channels"], "WECHAT_MASS is for marketing only"
    for index, channel in enumerate(scenario.channels):
        if scenario.content.for_channel(channel) is None:
            missing = f"no '{channel.content_key}' block for channel {channel} (channels[{index}])"
            yield file, [*base, "content"], missing
        if not sections.defined("channels", channel):
            yield file, [*base, "channels", index], f"channel {channel} has no entry in the channels section"
    for channel in Channel:
        if scenario.content.for_channel(channel) is not None and channel not in scenario.channels:
            yield (
                file,
                [*base, "content", channel.content_key],
                f"content for {channel}, which is not in channels; add it there or remove the block",
            )
    for tag, blocks in scenario.content.locales.items():
        for channel in Channel:
            if blocks.for_channel(channel) is not None and channel not in scenario.channels:
                yield (
                    file,
                    [*base, "content", "locales", tag, channel.content_key],
                    f"content for {channel} in locale '{tag}', which is not in channels; add it there or remove "
                    "the block",
                )
    # Every placeholder of the default content and of each locale's.
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
            yield file, [*base, "content", *loc], f"placeholder '{{{placeholder}}}' is not declared; {hint}"
    tiers = sections.tiers
    for index, tier in enumerate(scenario.target_tiers):
        if tiers is not None and tier not in tiers.names:
            yield (
                file,
                [*base, "target_tiers", index],
                f"unknown tier '{tier}'; tiers are {', '.join(sorted(tiers.names))}",
            )


def _arbitrates(category: Category, policy: CategoryPolicy) -> bool:
    """As ``Policy.arbitrates``, for a set not yet loaded."""
    return policy.arbitrate if policy.arbitrate is not None else category is Category.MARKETING


def cross_check(sections: _Sections, directory: str) -> Iterator[_Fault]:
    """What no single entry can check: names that refer to each other, and rules over
    several entries. Only entries that validated are checked, and a check whose input is
    invalid (or may be in a file that could not be read) is skipped."""

    def file_of(section: str, key: Any = None) -> str:
        return sections.file_of(section, key, default=directory)

    for bu_name, unit in sections.valid["business_units"].items():
        for index, granted in enumerate(unit.scenarios):
            if not sections.defined("scenarios", granted):
                yield (
                    file_of("business_units", bu_name),
                    ["business_units", bu_name, "scenarios", index],
                    f"unknown scenario '{granted}'",
                )
    for name, scenario in sections.valid["scenarios"].items():
        yield from _check_scenario(sections, name, scenario, file_of("scenarios", name))
    tiers = sections.tiers
    categories: dict[Category, CategoryPolicy] = sections.valid["categories"]
    for category, cat_policy in categories.items():
        file = file_of("categories", category)
        for index, cap in enumerate(cat_policy.caps):
            loc = ["categories", category, "caps", index]
            for tier in cap.per_tier:
                if tiers is not None and tier not in tiers.names:
                    yield file, [*loc, "per_tier"], f"unknown tier '{tier}'"
            if cap.bu is not None and not sections.defined("business_units", cap.bu):
                yield file, [*loc, "bu"], f"unknown business unit '{cap.bu}'"
            if cap.channel is not None and not sections.defined("channels", cap.channel):
                yield file, [*loc, "channel"], f"channel {cap.channel} is not configured"
    basic = categories.get(Category.BASIC)
    if basic is not None and basic.arbitrate:
        yield (
            file_of("categories", Category.BASIC),
            ["categories", Category.BASIC, "arbitrate"],
            "basic messages never wait for a send window or compete; remove it",
        )
    if basic is not None and basic.quiet_hours.mode == "drop":
        yield (
            file_of("categories", Category.BASIC),
            ["categories", Category.BASIC, "quiet_hours", "mode"],
            "basic messages are never dropped for quiet hours; use exempt or defer",
        )
    defaults = sections.defaults
    if (
        defaults is not None
        and not defaults.send_windows
        and any(_arbitrates(category, policy) for category, policy in categories.items())
    ):
        yield (
            file_of("defaults"),
            ["defaults", "send_windows"],
            'a category arbitrates, so send windows are required (e.g. ["07:30-09:30", "18:00-22:00"])',
        )
    for channel, chan_policy in sections.valid["channels"].items():
        file = file_of("channels", channel)
        if not sections.defined("providers", chan_policy.provider):
            yield (
                file,
                ["channels", channel, "provider"],
                f"unknown provider '{chan_policy.provider}'; providers are {', '.join(sections.names('providers'))}",
            )
        if chan_policy.cs_windows and channel is not Channel.WECHAT_CS:
            yield file, ["channels", channel, "cs_windows"], "cs_windows belongs to WECHAT_CS only"
    audiences: dict[str, AudienceDefinition] = sections.valid["audiences"]
    for name, audience in audiences.items():
        # Its syntax was checked with the entry; what is left is the tier names.
        if tiers is None:
            continue
        try:
            parse(audience.expression, tiers.names)
        except AudienceError as exc:
            yield file_of("audiences", name), ["audiences", name, "expression"], str(exc)
    events: WechatEvents | None = sections.singles.get("wechat_events")
    for loc, problem in overlaps(events) if events is not None else ():
        yield file_of("wechat_events"), ["wechat_events", *loc], problem
