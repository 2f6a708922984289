"""The local admin token: a gateway started without HERALD_ADMIN_TOKEN makes one in its
data folder (mode 0600), names the file (never the token) in its log, and `herald kill`
on the same machine finds it; with HERALD_ADMIN_TOKEN set, nothing of this happens."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.admin_token import TokenFileError, local_token, read_token
from tests.conftest import ROOT
from tests.helpers import HERALD, free_port, herald_serve


def test_made_once_readable_by_its_owner_only(tmp_path: Path) -> None:
    old = os.umask(0)  # even a permissive umask leaves it 0600
    try:
        token, path, made = local_token(tmp_path / "var")
    finally:
        os.umask(old)
    assert made and path == tmp_path / "var" / "admin-token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(token) > 40 and token.startswith("hat_")
    again, _, made_again = local_token(tmp_path / "var")
    assert again == token and not made_again  # kept across restarts
    assert [p.name for p in path.parent.iterdir()] == ["admin-token"]  # no draft left behind


def test_an_empty_file_says_what_to_do(tmp_path: Path) -> None:
    (tmp_path / "admin-token").write_text("\n")
    with pytest.raises(TokenFileError, match="delete it"):
        read_token(tmp_path / "admin-token")


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("HERALD_ADMIN_TOKEN", "HERALD_REDIS_URL")}
    return {
        **env,
        "HERALD_LISTEN": f"127.0.0.1:{free_port()}",
        "HERALD_ADMIN_LISTEN": f"127.0.0.1:{free_port()}",
        "HERALD_DATA_DIR": str(tmp_path / "var"),
        "HERALD_LOG_LEVEL": "INFO",
        **extra,
    }


@pytest.fixture
def local_gateway(tmp_path: Path) -> Iterator[tuple[dict[str, str], Path]]:
    env = _env(tmp_path)
    log = tmp_path / "serve.log"
    with herald_serve(env, log):
        yield env, log


def kill(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    admin = "http://" + env["HERALD_ADMIN_LISTEN"]
    return subprocess.run(
        [*HERALD, "kill", *args, "--admin-url", admin], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )


def test_kill_works_against_a_gateway_started_without_a_token(local_gateway: tuple[dict[str, str], Path]) -> None:
    env, log = local_gateway
    path = Path(env["HERALD_DATA_DIR"]) / "admin-token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    token = path.read_text().strip()

    made = kill(env, "set", "--scope", "campaign", "--value", "d11-presale", "--reason", "wrong price", "--actor", "li")
    assert made.returncode == 0, made.stderr
    listed = kill(env, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [s["value"] for s in json.loads(listed.stdout)["switches"]] == ["d11-presale"]

    elsewhere = kill({**env, "HERALD_DATA_DIR": str(path.parent.parent / "other")}, "list")
    assert elsewhere.returncode == 1
    assert "no admin token" in elsewhere.stderr and "other/admin-token does not exist" in elsewhere.stderr

    wrong = kill({**env, "HERALD_ADMIN_TOKEN": "not-the-token"}, "list")  # a token given wins over the file
    assert wrong.returncode == 1 and "401" in wrong.stderr

    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    said = [line for line in lines if line["event"] == "admin_token_file"]
    assert len(said) == 1 and said[0]["path"] == str(path) and said[0]["made"] is True
    everything = log.read_text() + made.stdout + made.stderr + listed.stdout + elsewhere.stderr + wrong.stderr
    assert token not in everything


def test_with_a_token_set_no_file_is_made(tmp_path: Path) -> None:
    env = _env(tmp_path, HERALD_ADMIN_TOKEN="adm-production-0123456789")
    log = tmp_path / "serve.log"
    with herald_serve(env, log):
        listed = kill(env, "list")
        assert listed.returncode == 0, listed.stderr
    assert not (tmp_path / "var" / "admin-token").exists()
    assert "admin_token_file" not in log.read_text()
    assert "adm-production-0123456789" not in log.read_text()
