"""The repository stands alone: no tracked file points outside it.

A clone from the repository host is all a reader has, so every tracked file
(``git ls-files``) is checked for:

- paths of the machine it was written on: ``/work/...``, home folders (``/home``,
  ``/root``, ``/Users``), ``/mnt``, ``/media``, ``/srv``, ``/opt``.
  Paths every Linux machine has are allowed (``/proc``, ``/dev/null``, ``/usr/bin/env``,
  ``/tmp``...): examples may use them;
- relative paths that climb out of their folder (``../x``): they must land on a file
  or folder of the repository (``.ci/run`` runs ``../scripts/test``), so a folder beside
  the checkout is never named;
- names of repository files (``docs/design.md``, ``gateway/store/keys.py``, in prose,
  comments and docstrings), which must exist; a named section after them
  (``docs/design.md, "Channel routing"``, ``README "Credentials"``) must be one of that
  file's headings;
- Markdown links (``[text](target)``) in README.md, docs/ and ops/: a relative target
  must be a file or folder of the repository, and an ``#anchor`` one of the target's
  headings (GitHub's slugs). URLs (``scheme:``) are not fetched.

A bare Markdown name (``channels.md``, ``NOTES.md``) must be the name of one of the
repository's Markdown files. Placeholders (``<...>``, ``*``, ``{...}``) in a name make it
a pattern, not a file, and are skipped.
"""

from __future__ import annotations

import re
import subprocess
from functools import cache
from pathlib import Path, PurePosixPath

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Written but not merged yet: linked already, checked once they exist.
PENDING: frozenset[str] = frozenset()

MACHINE_PATH = re.compile(r"(?<![\w.~/-])/(?:work|home|root|Users|mnt|media|srv|opt)/")
CLIMB = re.compile(r"(?<![\w./-])((?:\.\./)+[\w][\w./-]*)")
TOP = ("docs", "ops", "gateway", "channels", "tests", "bench", "scripts", "policies", "config", "examples", "protos")
FILE_NAME = re.compile(
    r"(?<![\w./<{-])((?:" + "|".join(TOP) + r")/[\w./-]*\w\.(?:md|py|yml|yaml|json|jsonl|csv|proto|sh|toml))"
    r"(?![\w/<{*-])"
)
# A file, then a quoted section name, maybe on the next line of a comment.
BARE_MARKDOWN = re.compile(r"(?<![\w./<{*-])([\w-]+\.md)\b(?![\w/<{*-])")
SECTION = re.compile(r"\b((?:docs|ops)/[\w.-]+\.md|README(?:\.md)?)\b,?(?:[ \t]|\n[ \t]*(?:#|//)?[ \t]*)\"([^\"\n]+)\"")
LINK = re.compile(r"(?<!!)\[[^\]\n]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)


@cache
def tracked() -> tuple[str, ...]:
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, timeout=30
        ).stdout.decode()
    except (OSError, subprocess.CalledProcessError):  # pragma: no cover - not a git checkout
        pytest.skip("not a git checkout: nothing to list")
    return tuple(sorted(name for name in out.split("\0") if name))


@cache
def present() -> frozenset[str]:
    """Tracked files and their folders (a deleted file not yet committed is absent)."""
    names: set[str] = set()
    for name in tracked():
        if (ROOT / name).exists():
            names.add(name)
            names.update(str(parent) for parent in PurePosixPath(name).parents if str(parent) != ".")
    return frozenset(names)


def texts() -> list[tuple[str, str]]:
    out = []
    for name in tracked():
        path = ROOT / name
        if not path.is_file():
            continue
        try:
            out.append((name, path.read_text(encoding="utf-8")))
        except UnicodeDecodeError:
            continue  # binary
    return out


def line_of(text: str, index: int) -> int:
    return text.count("\n", 0, index) + 1


def normalized(path: PurePosixPath) -> str | None:
    """``a/b/../c`` as ``a/c``; None when it climbs out of the repository."""
    parts: list[str] = []
    for part in path.parts:
        if part == "..":
            if not parts:
                return None
            parts.pop()
        elif part != ".":
            parts.append(part)
    return "/".join(parts)


def exists(name: str) -> bool:
    return name in present() or name in PENDING


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to -."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading: its text
    text = text.lower().replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


@cache
def headings(name: str) -> tuple[str, ...]:
    text = (ROOT / name).read_text(encoding="utf-8")
    text = re.sub(r"^```.*?^```", "", text, flags=re.MULTILINE | re.DOTALL)  # not comments in code
    return tuple(m.group(1).strip() for m in HEADING.finditer(text))


def section_names(name: str) -> set[str]:
    """How prose may name the file's headings: as written, or without a closing
    parenthesis ("Alibaba Cloud SMS" for "Alibaba Cloud SMS (`SMS`)")."""
    names = set()
    for heading in headings(name):
        plain = heading.replace("`", "").lower()
        names.update({plain, re.sub(r"\s*\([^)]*\)$", "", plain)})
    return names


def anchors(name: str) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for heading in headings(name):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        out.add(base if count == 0 else f"{base}-{count}")
    return out


def test_no_machine_paths() -> None:
    found = [
        f"{name}:{line_of(text, m.start())}: {text[m.start() : m.start() + 40].splitlines()[0]}"
        for name, text in texts()
        if name != "tests/test_repository.py"
        for m in MACHINE_PATH.finditer(text)
    ]
    assert not found, "paths of one machine, not of the repository:\n" + "\n".join(found)


def test_relative_paths_stay_inside() -> None:
    found = []
    for name, text in texts():
        if name == "tests/test_repository.py":
            continue
        for m in CLIMB.finditer(text):
            target = normalized(PurePosixPath(name).parent / m.group(1).rstrip("."))
            if target is None or not exists(target):
                found.append(f"{name}:{line_of(text, m.start())}: {m.group(1)}")
    assert not found, "relative paths to nothing in the repository:\n" + "\n".join(found)


def test_named_files_exist() -> None:
    found = []
    for name, text in texts():
        if name == "tests/test_repository.py":
            continue
        for m in FILE_NAME.finditer(text):
            target = m.group(1)
            if exists(target):
                continue
            # A path relative to the file's own folder ("docs/x.md" inside docs/ is rare).
            if exists(normalized(PurePosixPath(name).parent / target) or ""):
                continue
            found.append(f"{name}:{line_of(text, m.start())}: {target}")
        for m in BARE_MARKDOWN.finditer(text):
            if m.group(1) not in markdown_names():
                found.append(f"{name}:{line_of(text, m.start())}: {m.group(1)}")
    assert not found, "names of files the repository does not have:\n" + "\n".join(found)


def markdown_names() -> set[str]:
    return {PurePosixPath(n).name for n in present() | PENDING if n.endswith(".md")}


def test_named_sections_exist() -> None:
    found = []
    for name, text in texts():
        if name == "tests/test_repository.py":
            continue
        for m in SECTION.finditer(text):
            target = "README.md" if m.group(1).startswith("README") else m.group(1)
            if target in PENDING and not (ROOT / target).exists():
                continue
            section = m.group(2)
            if not exists(target) or section.lower() not in section_names(target):
                found.append(f"{name}:{line_of(text, m.start())}: {target}, {section!r}")
    assert not found, "sections that are not headings of the file named:\n" + "\n".join(found)


def markdown_files() -> list[str]:
    return [n for n in tracked() if n.endswith(".md") and (n == "README.md" or n.startswith(("docs/", "ops/")))]


def test_markdown_links_resolve() -> None:
    found = []
    for name in markdown_files():
        text = (ROOT / name).read_text(encoding="utf-8")
        # Code is not prose: a link-like text in a fenced block or a `span` is not a link.
        prose = re.sub(r"^```.*?^```", lambda m: "\n" * m.group(0).count("\n"), text, flags=re.M | re.S)
        prose = re.sub(r"`[^`\n]*`", lambda m: " " * len(m.group(0)), prose)
        for m in LINK.finditer(prose):
            target = m.group(1)
            where = f"{name}:{line_of(prose, m.start())}: ({target})"
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):
                continue  # a URL (https:, mailto:)
            path, _, anchor = target.partition("#")
            resolved = normalized(PurePosixPath(name).parent / path) if path else name
            if resolved is None or not exists(resolved):
                found.append(f"{where} is no file of the repository")
                continue
            if anchor and resolved.endswith(".md") and (ROOT / resolved).exists() and anchor not in anchors(resolved):
                found.append(f"{where} has no heading #{anchor}")
    assert not found, "Markdown links that lead nowhere:\n" + "\n".join(found)


def sections(text: str) -> list[tuple[str, ...]]:
    return [m.groups() for m in SECTION.finditer(text)]


def test_the_checks_catch_what_they_should() -> None:
    """The patterns above, on lines that must and must not be flagged."""
    assert MACHINE_PATH.search("$ /work/main/.venv/bin/python bench/compare.py")
    assert MACHINE_PATH.search("open('/home/li/herald/x')")
    assert not MACHINE_PATH.search("https://example.com/work/x and /proc/stat and /tmp/x and /dev/null")
    assert not MACHINE_PATH.search("var/work/x, a/home/b")
    assert [m.group(1) for m in FILE_NAME.finditer("see docs/design.md, and gateway/store/keys.py.")] == [
        "docs/design.md",
        "gateway/store/keys.py",
    ]
    assert not FILE_NAME.search("https://github.com/x/docs/design.md")
    assert not FILE_NAME.search("<data dir>/spool/spool.log tests/store/<name>.py docs/*.md")
    assert [m.group(1) for m in BARE_MARKDOWN.finditer('See NOTES.md "Vocabulary"; docs/x.md, *.md')] == ["NOTES.md"]
    assert sections('docs/design.md, "Channel routing"') == [("docs/design.md", "Channel routing")]
    assert sections('see README "Credentials"') == [("README", "Credentials")]
    assert sections('(docs/design.md\n"Arbitration")') == [("docs/design.md", "Arbitration")]
    assert sections('# docs/design.md,\n# "State"') == [("docs/design.md", "State")]
    assert slug("The API (`protos/herald/v1/`)") == "the-api-protosheraldv1"
    assert slug("Campaigns, audiences and the funnel") == "campaigns-audiences-and-the-funnel"
    assert normalized(PurePosixPath(".ci/../scripts/test")) == "scripts/test"
    assert normalized(PurePosixPath("channels/../../beside/x")) is None  # out of the checkout
    assert [m.group(1) for m in CLIMB.finditer("see ../../beside/notes.md")] == ["../../beside/notes.md"]
