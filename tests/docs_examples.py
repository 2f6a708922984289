"""The fenced code blocks of the README and the docs, and the shell commands in them.

``tests/test_docs_examples.py`` runs the commands; this module only reads Markdown.
A block is a fence (```` ```sh ````, ```` ```yaml ````, ```` ``` ```` ...) at any
indentation, its body dedented by the fence's indentation. A shell block holds one or
more commands: a command is a line, with the lines after it while it ends in ``\\`` or
leaves a quote open (a ``grpcurl -d '{ ... }'`` of several lines is one command).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

# The pages whose examples a reader runs.
PAGES = ("README.md", "docs/*.md", "ops/runbook.md")
SHELL = frozenset({"sh", "shell", "bash", "console"})
# Blocks that show what a command prints (or an expression, a grammar, a path).
OUTPUT = frozenset({"", "text"})

FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w+-]*)[ \t]*$")


@dataclass(frozen=True)
class Block:
    page: str  # relative to the repository, as in the skip table: "docs/campaigns.md"
    line: int  # of the opening fence, counted from 1
    lang: str
    body: str
    # Only blank lines between this block's opening fence and the closing fence of the
    # block before it: shown as that block's output.
    follows_directly: bool


@dataclass(frozen=True)
class Command:
    page: str
    line: int  # of its first line
    text: str  # as written, lines joined by newlines

    @property
    def key(self) -> tuple[str, str]:
        """How the tables name a command: its page and its first line, without its
        comment or a line-continuing backslash, spaces collapsed
        (``.venv/bin/herald kill list``)."""
        return self.page, " ".join(code_of(self.text.splitlines()[0]).removesuffix("\\").split())


def code_of(line: str) -> str:
    """``line`` without its trailing ``# comment`` (a ``#`` after a space, outside quotes)."""
    quote = ""
    for i, char in enumerate(line):
        if quote:
            if char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1] in " \t"):
            return line[:i]
    return line


def pages(root: Path) -> list[Path]:
    found: list[Path] = []
    for pattern in PAGES:
        found.extend(sorted(root.glob(pattern)))
    return found


def blocks(root: Path, path: Path) -> list[Block]:
    page = path.relative_to(root).as_posix()
    lines = path.read_text(encoding="utf-8").splitlines()
    out: list[Block] = []
    last_close = -2
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        indent = len(opening["indent"])
        start = i
        i += 1
        body: list[str] = []
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i][indent:] if lines[i][:indent].strip() == "" else lines[i])
            i += 1
        if i == len(lines):
            raise ValueError(f"{page}:{start + 1}: a fence that is never closed")
        between = lines[last_close + 1 : start] if last_close >= 0 else ["not adjacent"]
        out.append(Block(page, start + 1, opening["lang"], "\n".join(body), all(not s.strip() for s in between)))
        last_close = i
        i += 1
    return out


def _complete(text: str) -> bool:
    if text.endswith("\\"):
        return False
    try:
        shlex.split(text, comments=True)
    except ValueError:  # "No closing quotation"
        return False
    return True


def commands(block: Block) -> list[Command]:
    """The block's commands, blank lines and whole-line comments left out."""
    out: list[Command] = []
    pending: list[str] = []
    first = 0
    for n, line in enumerate(block.body.splitlines()):
        if not pending:
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            first = n
        pending.append(line)
        text = "\n".join(pending)
        if _complete(text):
            out.append(Command(block.page, block.line + 1 + first, text))
            pending = []
    if pending:
        raise ValueError(f"{block.page}:{block.line + 1 + first}: a command that never ends: {pending[0]!r}")
    return out


def first_word(text: str) -> str:
    words = text.split()
    return words[0] if words else ""
