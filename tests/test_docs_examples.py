"""Every shell example of the README, docs/ and ops/runbook.md runs as written.

Each ```` ```sh ```` block is split into commands (``tests/docs_examples.py``), and each
command is run with bash, as written, in a copy of the repository's tracked files (a
fresh clone, with ``.venv/bin/python`` and ``.venv/bin/herald`` standing for the
virtualenv the scripts make: this interpreter, on the copy's code), one shell session a
page (``export`` carries over to the page's next commands), against a gateway started
there as ``scripts/run`` starts it (``.venv/bin/herald serve`` in the copy's folder: its
policies, sample credentials, ``var/``), on free ports. Each page starts from a fresh
gateway (in-memory state) and a clean copy: the pages are separate walk-throughs (the
README erases ``u-1001`` and completes the campaign that docs/campaigns.md then creates
and starts).

What a session has that a reader's terminal has too, so that no command is rewritten
for it: ``HERALD_TARGET`` and ``HERALD_ADMIN_URL``, the variables the CLI reads for the
gateway's address (the docs use the defaults, 127.0.0.1:50051 and :9464), and
``.venv/bin`` on ``PATH`` (docs/ call ``herald`` as after ``. .venv/bin/activate``).

A command passes when it exits 0 (or as ``EXIT`` says) and, where the page shows its
output (an output block right after its block, or one of ``SHOWN_LATER``), the first
line of that output, ids, hashes and numbers aside, is a line of what it printed.
Commands that cannot run here are in ``SKIP`` with the reason, and every other command
is run, so an example is checked from the day it is written; what is substituted is in
``SUBSTITUTIONS``; an entry of any table that no longer names a command fails. YAML
blocks made of policy sections must validate as a policy file (``EXCERPTS`` aside).
"""

from __future__ import annotations

import itertools
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from gateway.policy.schema import PolicyFile
from tests.docs_examples import OUTPUT, SHELL, Block, Command, blocks, commands, pages
from tests.helpers import free_port, herald_serve, wait_for_port

ROOT = Path(__file__).resolve().parent.parent

Key = tuple[str, str]  # (page, the command's first line without its comment): Command.key

# An entry covers every command of the page that starts with its line.
SKIP: dict[Key, str] = {
    ("README.md", "scripts/run"): (
        "serves until stopped; the gateway these examples run against is its last step, "
        "`.venv/bin/herald serve`, on free ports"
    ),
    ("README.md", "scripts/test"): "the test suite this test is part of",
    ("README.md", "grpcurl -plaintext 127.0.0.1:50051 list"): (
        "grpcurl is not installed here: a Go binary, neither a Debian package nor a dependency of ours"
    ),
    ("README.md", """grpcurl -plaintext -H "authorization: Bearer $HERALD_API_KEY" -d '{"""): "grpcurl, as above",
    ("README.md", "grpcurl -plaintext 127.0.0.1:50051 grpc.health.v1.Health/Check"): "grpcurl, as above",
    ("README.md", ".venv/bin/python bench/compare.py"): (
        "a benchmark of minutes; tests/test_bench.py runs the bench scripts on a tiny workload"
    ),
    ("README.md", ".venv/bin/python bench/compare.py --targets echo,herald-memory"): "a benchmark, as above",
    ("README.md", ".venv/bin/python bench/compare.py --requests 20000 --concurrency 64"): "a benchmark, as above",
    ("README.md", ".venv/bin/python bench/compare.py --rate 500 --duration 20"): "a benchmark, as above",
    ("README.md", ".venv/bin/python bench/delivery_bench.py --store redis --messages 10000"): "a benchmark, as above",
    ("README.md", ".venv/bin/python bench/delivery_bench.py --store redis --messages 10000 --processes 2"): (
        "a benchmark, as above"
    ),
    ("README.md", ".venv/bin/python bench/delivery_bench.py --store redis --messages 20000 --batch 500"): (
        "a benchmark, as above"
    ),
    ("README.md", ".venv/bin/python bench/campaign_bench.py"): "a benchmark, as above",
    ("README.md", ".venv/bin/python bench/campaign_bench.py --processes 2"): "a benchmark, as above",
    ("README.md", ".venv/bin/python bench/campaign_bench.py --users 20000"): (
        "a benchmark, as above (its 'quick look' takes 10 s and more on 2 busy cores)"
    ),
    ("README.md", ".venv/bin/python bench/campaign_bench.py --audience untagged"): "a benchmark, as above",
    ("README.md", ".venv/bin/python bench/campaign_bench.py --processes 2 --audience everyone"): (
        "a benchmark, as above"
    ),
    ("docs/deployment.md", "HERALD_REDIS_URL=redis://:secret@redis-a:6379/0 HERALD_REDIS_CLUSTER=true"): (
        "the production sketch's gateways and workers: serve until stopped, on a Redis Cluster at redis-a"
    ),
    ("docs/deployment.md", "HERALD_DELIVER_LANES=basic,reminder HERALD_CAMPAIGNS=false herald serve ..."): (
        "a production sketch: `...` stands for the deployment's settings; serves until stopped"
    ),
    (
        "docs/deployment.md",
        "HERALD_DELIVER_LANES=marketing HERALD_CAMPAIGN_SCANS=8 HERALD_CAMPAIGN_CHUNK=400 herald worker ...",
    ): ("a production sketch, as above"),
    ("docs/users-import.md", "herald users import FILE [--format csv|jsonl] [--batch 500] [--concurrency 4]"): (
        "the synopsis of the options, not a command"
    ),
}


@dataclass(frozen=True)
class Put:
    """``written`` in the command is replaced by ``value``, with the sandbox's
    ``{admin_url}`` and ``{admin_token}`` put in, or, with ``earlier``, by the first
    match of that regular expression in what the page's commands printed so far."""

    written: str
    value: str = ""
    earlier: str = ""
    why: str = ""


PRODUCTION_ADMIN = (
    Put("http://10.0.0.12:9464", "{admin_url}", why="a production replica's address: this run's gateway's"),
    Put("HERALD_ADMIN_TOKEN=...", "HERALD_ADMIN_TOKEN={admin_token}", why="the production token: this run's gateway's"),
)
SWITCH_ID = Put("ks_01...", earlier=r"\bks_[0-9A-Z]+\b", why="a switch's id: the first one `herald kill set` printed")
SUBSTITUTIONS: dict[Key, tuple[Put, ...]] = {
    ("README.md", "export HERALD_ADMIN_URL=http://10.0.0.12:9464 HERALD_ADMIN_TOKEN=..."): PRODUCTION_ADMIN,
    ("README.md", 'herald kill clear ks_01... --actor sre-li --note "fixed"'): (SWITCH_ID,),
    ("ops/runbook.md", "export HERALD_ADMIN_URL=http://10.0.0.12:9464 HERALD_ADMIN_TOKEN=..."): PRODUCTION_ADMIN,
    ("ops/runbook.md", 'herald kill clear ks_01... --actor sre-li --note "copy fixed"'): (SWITCH_ID,),
}

# Commands whose output the page shows after some prose rather than right after their
# block: the first line of the output block shown.
SHOWN_LATER: dict[Key, str] = {
    (
        "README.md",
        ".venv/bin/herald preview -s order.shipped -p order_id=O-1 -p carrier=SF -p tracking_no=SF1 --locale en-GB",
    ): "order.shipped (basic), policy 57c1627f0189; locale en-GB: content locales.en",
    (
        "README.md",
        ".venv/bin/herald policy simulate --policies policies --policies my-change --traffic examples/traffic-day.jsonl",
    ): (
        "time shifts, policies -> my-change (the messages both sent, matched by business unit and request_id; "
        "moved less than 1m: same time):"
    ),
    ("README.md", ".venv/bin/herald users delete u-1001 --yes"): (
        "user u-1001 erased (log id user_ref=7b1bb73425c6); removed:"
    ),
}

# Commands a page shows failing on purpose, with their exit code (none today).
EXIT: dict[Key, int] = {}

# Policy fragments (YAML blocks whose keys are policy sections) that show part of an
# entry only, so cannot validate alone: (page, a line of the block, stripped).
EXCERPTS: dict[tuple[str, str], str] = {
    ("docs/policy.md", "order.shipped:"): "order.shipped's channels and content only (no category)",
}

VOLATILE = (
    (re.compile(r"\b(m|ks)_[0-9A-Z]+(?:\.\.\.|…)?"), r"\1_<id>"),  # ids; the docs cut them short
    (re.compile(r"\b[0-9a-f]{12}\b"), "<hash>"),  # policy versions, user_ref
    (re.compile(r"\d+"), "0"),
    (re.compile(r"\s+"), " "),
)


def shape(line: str) -> str:
    for pattern, put in VOLATILE:
        line = pattern.sub(put, line)
    return line.strip()


def all_blocks() -> list[Block]:
    return [block for page in pages(ROOT) for block in blocks(ROOT, page)]


def shell_commands() -> list[Command]:
    return [command for block in all_blocks() if block.lang in SHELL for command in commands(block)]


def shown_right_after() -> dict[Key, str]:
    """Commands whose block an output block follows directly: that block's first line,
    for the block's last command."""
    found = all_blocks()
    out: dict[Key, str] = {}
    for block, after in itertools.pairwise(found):
        if block.lang in SHELL and after.lang in OUTPUT and after.follows_directly and after.page == block.page:
            last = commands(block)[-1]
            out[last.key] = after.body.strip().splitlines()[0]
    return out


def runnable_pages() -> list[str]:
    return sorted({c.page for c in shell_commands() if c.key not in SKIP}, key=lambda p: (p != "README.md", p))


def test_every_table_entry_names_a_command_of_the_docs() -> None:
    found = {c.key: c for c in shell_commands()}
    keys = [c.key for c in shell_commands()]
    ambiguous = {k for k in set(SUBSTITUTIONS) | set(EXIT) | set(SHOWN_LATER) if keys.count(k) > 1}
    assert not ambiguous, f"entries that name more than one command (make their first lines differ): {ambiguous}"
    stale = [f"SKIP {key}" for key in SKIP if key not in found]
    stale += [f"EXIT {key}" for key in EXIT if key not in found]
    for key, puts in SUBSTITUTIONS.items():
        if key not in found:
            stale.append(f"SUBSTITUTIONS {key}")
            continue
        stale += [f"SUBSTITUTIONS {key}: {p.written!r} is not in it" for p in puts if p.written not in found[key].text]
    for key, first_line in SHOWN_LATER.items():
        command = found.get(key)
        later = [b for b in all_blocks() if command and b.page == command.page and b.line > command.line]
        if not any(b.lang in OUTPUT and b.body.strip().splitlines()[:1] == [first_line] for b in later):
            stale.append(f"SHOWN_LATER {key}: no output block after it starts {first_line!r}")
    yaml_lines = {(b.page, line.strip()) for b in all_blocks() if b.lang == "yaml" for line in b.body.splitlines()}
    stale += [f"EXCERPTS {key}" for key in EXCERPTS if key not in yaml_lines]
    both = set(SKIP) & (set(SUBSTITUTIONS) | set(EXIT) | set(SHOWN_LATER))
    assert not stale, "entries that name no command (or block) of the docs any more:\n" + "\n".join(stale)
    assert not both, f"skipped, yet substituted or checked: {both}"


def test_the_pages_have_examples_to_run() -> None:
    """A guard against a parser that finds nothing (and so runs nothing)."""
    assert {"README.md", "docs/campaigns.md", "ops/runbook.md"} <= set(runnable_pages())
    assert len([c for c in shell_commands() if c.key not in SKIP]) >= 30


def test_policy_fragments_validate_as_a_policy_file() -> None:
    sections = set(PolicyFile.model_fields)
    checked, problems = 0, []
    for block in all_blocks():
        if block.lang != "yaml" or any((block.page, line.strip()) in EXCERPTS for line in block.body.splitlines()):
            continue
        data = yaml.safe_load(block.body)
        if not isinstance(data, dict) or not data or not set(data) <= sections:
            continue  # not a policy fragment: a credentials entry, a campaign, a comment line
        checked += 1
        try:
            PolicyFile.model_validate(data)
        except ValidationError as exc:
            problems.append(f"{block.page}:{block.line}: {exc}")
    assert not problems, "\n".join(problems)
    assert checked >= 4


@dataclass
class Sandbox:
    """A copy of the repository's tracked files, a gateway served from it, and a shell
    session a page."""

    tmp: Path
    copy: Path
    tracked: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    values: dict[str, str] = field(default_factory=dict)
    gateway: ExitStack = field(default_factory=ExitStack)

    @property
    def session(self) -> Path:
        return self.tmp / "session.sh"

    @classmethod
    def make(cls, tmp: Path) -> Sandbox:
        try:
            listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, timeout=30)
        except (OSError, subprocess.CalledProcessError):  # pragma: no cover - not a git checkout
            pytest.skip("not a git checkout: no list of the files a clone has")
        tracked = tuple(n for n in listed.stdout.decode().split("\0") if n and (ROOT / n).is_file())
        sandbox = cls(tmp, tmp / "herald", tracked)
        bin_dir = sandbox.copy / ".venv" / "bin"
        bin_dir.mkdir(parents=True)
        copy = shlex.quote(str(sandbox.copy))
        shims = {
            "python": f'PYTHONPATH={copy}"${{PYTHONPATH:+:$PYTHONPATH}}" exec {shlex.quote(sys.executable)} "$@"',
            "herald": f'exec {copy}/.venv/bin/python -m gateway.cli.main "$@"',
        }
        for name, line in shims.items():
            (bin_dir / name).write_text(f"#!/bin/sh\n{line}\n", encoding="utf-8")
            (bin_dir / name).chmod(0o755)
        return sandbox

    def _sync(self) -> None:
        """The tracked files as in the checkout; anything else gone but ``.venv`` and
        ``var`` (the gateway's folder: its admin token is kept across restarts)."""
        tracked = set(self.tracked)
        for path in sorted(self.copy.rglob("*"), reverse=True):
            name = path.relative_to(self.copy).as_posix()
            if name.split("/")[0] in (".venv", "var") or name in tracked:
                continue
            if path.is_dir() and not path.is_symlink():
                if not any(path.iterdir()):
                    path.rmdir()
            else:
                path.unlink()
        for name in self.tracked:
            target = self.copy / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, target)

    def fresh(self, page: str) -> None:
        """A clean copy, a gateway with nothing in it, and a new shell session."""
        self.gateway.close()
        self._sync()
        grpc_port, admin_port = free_port(), free_port()
        reader = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_") and k != "PYTHONPATH"}
        log = self.tmp / f"serve-{page.replace('/', '-')}.log"
        served = {**reader, "HERALD_LISTEN": f"127.0.0.1:{grpc_port}", "HERALD_ADMIN_LISTEN": f"127.0.0.1:{admin_port}"}
        herald = self.copy / ".venv" / "bin" / "herald"
        self.gateway.enter_context(herald_serve(served, log, cwd=self.copy, command=[str(herald)]))
        wait_for_port(admin_port)
        self.values = {
            "admin_url": f"http://127.0.0.1:{admin_port}",
            "admin_token": (self.copy / "var" / "admin-token").read_text(encoding="utf-8").strip(),
            "log": str(log),
        }
        self.env = {
            **reader,
            "PATH": f"{herald.parent}{os.pathsep}{reader.get('PATH', '')}",
            "HERALD_TARGET": f"127.0.0.1:{grpc_port}",
            "HERALD_ADMIN_URL": self.values["admin_url"],
        }
        self.session.write_text("", encoding="utf-8")

    def run(self, command: str) -> subprocess.CompletedProcess[str]:
        """``command`` in the page's session: the variables earlier commands exported are
        set, and those it exports are kept for the next."""
        session = shlex.quote(str(self.session))
        # pipefail: every command of a pipeline must succeed, not the last alone.
        script = f". {session}\nset -o pipefail\n{command}\nstatus=$?\nexport -p > {session}\nexit $status\n"
        return subprocess.run(
            ["bash", "-c", script],
            cwd=self.copy,
            env=self.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
        )


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    made = Sandbox.make(tmp_path_factory.mktemp("docs-examples"))
    try:
        yield made
    finally:
        made.gateway.close()


@pytest.mark.parametrize("page", runnable_pages())
def test_examples_run_as_written(sandbox: Sandbox, page: str) -> None:
    sandbox.fresh(page)
    expected_first_line = {**shown_right_after(), **SHOWN_LATER}
    printed: list[str] = []
    failures: list[str] = []
    for command in (c for c in shell_commands() if c.page == page and c.key not in SKIP):
        text = command.text
        for put in SUBSTITUTIONS.get(command.key, ()):
            if put.earlier:
                match = re.search(put.earlier, "\n".join(printed))
                assert match, f"{command.page}:{command.line}: nothing printed before matches {put.earlier!r}"
                value = match.group(0)
            else:
                value = put.value.format(**sandbox.values)
            text = text.replace(put.written, value)
        result = sandbox.run(text)
        printed.append(result.stdout)
        where = f"{command.page}:{command.line}: {command.text}"
        said = f"\n--- stdout\n{result.stdout[-2000:]}--- stderr\n{result.stderr[-2000:]}"
        if result.returncode != EXIT.get(command.key, 0):
            failures.append(f"{where}\nexit {result.returncode}, not {EXIT.get(command.key, 0)}{said}")
            continue
        if "Traceback (most recent call last)" in result.stderr:
            failures.append(f"{where}\na traceback{said}")
        first_line = expected_first_line.get(command.key)
        if first_line is not None:
            lines = result.stdout.splitlines()
            candidates = lines[:1] if command.key not in SHOWN_LATER else lines
            if shape(first_line) not in {shape(line) for line in candidates}:
                failures.append(f"{where}\nthe page shows output starting {first_line!r}{said}")
    log = Path(sandbox.values["log"]).read_text(encoding="utf-8", errors="replace")
    assert not failures, "\n\n".join(failures) + f"\n\n--- the gateway's log (end)\n{log[-3000:]}"
