"""The herald command's small promises: every positional argument explains itself,
`kill` options work before or after the action, `keys new` checks the business unit and
prints an entry the gateway accepts as it is."""

from __future__ import annotations

import argparse
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from gateway.api.auth import Credentials
from gateway.cli.main import build_parser, main
from tests.conftest import POLICIES

SWITCH = {
    "id": "ks_1",
    "scope": "campaign",
    "value": "d11",
    "reason": "wrong price",
    "actor": "sre-li",
    "created_at": "2026-11-11T00:00:00+00:00",
    "expires_at": None,
}


def positionals(parser: argparse.ArgumentParser, path: str) -> Iterator[tuple[str, argparse.Action]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from positionals(sub, f"{path} {name}")
        elif not action.option_strings:
            yield path, action


def test_every_positional_argument_has_help() -> None:
    found = list(positionals(build_parser(), "herald"))
    assert len(found) >= 10  # the walk reaches the nested commands
    missing = [f"{path} {action.dest}" for path, action in found if not (action.help or "").strip()]
    assert not missing, "positional arguments without help text: " + ", ".join(missing)


@pytest.fixture
def admin() -> Iterator[tuple[str, list[tuple[str, str]]]]:
    """A stand-in for a gateway's admin API: answers GET /admin/kill-switches, records
    (path, Authorization) of every call."""
    calls: list[tuple[str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            calls.append((self.path, self.headers.get("Authorization", "")))
            body = json.dumps({"switches": [SWITCH]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", calls
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    "order",
    [
        ["kill", "--admin-url", "{url}", "--admin-token", "t0k", "--json", "list"],
        ["kill", "list", "--admin-url", "{url}", "--admin-token", "t0k", "--json"],
        ["kill", "--admin-url", "{url}", "list", "--json", "--admin-token", "t0k"],
    ],
    ids=["before", "after", "mixed"],
)
def test_kill_options_before_or_after_the_action(
    order: list[str], admin: tuple[str, list[tuple[str, str]]], capsys: pytest.CaptureFixture[str]
) -> None:
    url, calls = admin
    assert main([part.format(url=url) for part in order]) == 0
    assert json.loads(capsys.readouterr().out) == {"switches": [SWITCH]}
    assert calls == [("/admin/kill-switches", "Bearer t0k")]


def test_kill_list_without_json_prints_lines(
    admin: tuple[str, list[tuple[str, str]]], capsys: pytest.CaptureFixture[str]
) -> None:
    url, _ = admin
    assert main(["kill", "list", "--admin-url", url, "--admin-token", "t0k"]) == 0
    assert capsys.readouterr().out.startswith("ks_1  campaign=d11  by sre-li")


def test_keys_new_refuses_a_business_unit_the_policy_does_not_know(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "new", "shop", "--policy-dir", str(POLICIES)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # no key made
    assert "has no business unit 'shop'; known: growth, logistics, marketing, order" in captured.err


def test_keys_new_without_a_policy_says_how_to_name_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "new", "order", "--policy-dir", str(tmp_path / "none")]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "--policy-dir" in captured.err and "HERALD_POLICY_DIR" in captured.err


def test_keys_new_prints_a_complete_entry_the_gateway_accepts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["keys", "new", "growth", "--policy-dir", str(POLICIES), "--label", 'CRM: "spring" rotation']) == 0
    out = capsys.readouterr().out
    key = out.splitlines()[1].strip("# ").strip()
    assert key.startswith("hk_growth_") and out.count(key) == 1
    # the output as it is: a credentials file the gateway loads, in which the key is valid
    file = tmp_path / "credentials.yaml"
    file.write_text(out)
    credentials = Credentials.load(file)
    assert credentials.authenticate(f"Bearer {key}") == "growth"
    assert "label: " + json.dumps('CRM: "spring" rotation') in out


def test_output_cut_short_by_its_reader_ends_quietly() -> None:
    """`herald preview ... | head -1`: the reader closes the pipe before the output is
    all written; the rest is not wanted, which is no error and no traceback. (`true`
    reads nothing and is gone before the command has started, so every write fails.)"""
    import subprocess
    import sys

    command = (
        f"{sys.executable} -m gateway.cli.main preview -s order.shipped -p order_id=O-1 -p carrier=SF "
        f"-p tracking_no=SF1 --policy-dir {POLICIES} | true"
    )
    done = subprocess.run(["bash", "-o", "pipefail", "-c", command], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "Error" not in done.stderr, done.stderr
