"""What an operator sees of a running gateway: /metrics without `_created` series, console
logs without colour codes in a file, a store outage as a few lines rather than a flood
(with `health_changed` at info), and a worker that neither offers the API's flags nor
warns about the API's sample keys. Real processes, a real Redis stopped and started."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.cli.main import main
from gateway.config import API_ONLY, ENV
from tests.conftest import ROOT
from tests.helpers import RedisProcess, free_port, wait_for_port

HERALD = [sys.executable, "-m", "gateway.cli.main"]


def start(command: str, tmp_path: Path, log: Path, **extra: str) -> tuple[subprocess.Popen[bytes], int]:
    admin = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("HERALD_") and k != "NO_COLOR"},
        "HERALD_LISTEN": f"127.0.0.1:{free_port()}",
        "HERALD_ADMIN_LISTEN": f"127.0.0.1:{admin}",
        "HERALD_DATA_DIR": str(tmp_path / "var"),
        "HERALD_POLICY_DIR": str(ROOT / "policies"),
        **extra,
    }
    with log.open("wb") as out:
        proc = subprocess.Popen([*HERALD, command], env=env, cwd=ROOT, stderr=out)
    wait_for_port(admin, timeout=20)
    return proc, admin


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
    proc.wait(timeout=20)


def scrape(admin: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=10) as page:
        return str(page.read().decode())


def events(log: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]


def test_metrics_have_no_created_series_and_console_logs_no_colour_off_a_terminal(tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    proc, admin = start("serve", tmp_path, log, HERALD_LOG_FORMAT="console")
    try:
        text = scrape(admin)
    finally:
        stop(proc)
    # labelled counters and histograms (primed at start), the series that had _created
    assert any(line.startswith("herald_") and "_total{" in line for line in text.splitlines())
    assert any(line.startswith("herald_") and "_bucket{" in line for line in text.splitlines())
    assert [line for line in text.splitlines() if "_created" in line] == []
    written = log.read_text()
    assert "started" in written and "sample_credentials" in written  # serve warns of the sample keys
    assert "\x1b[" not in written, "colour codes in a log written to a file"


@pytest.fixture
def redis_process() -> Iterator[RedisProcess]:
    server = RedisProcess(aof=False)
    server.start()
    try:
        yield server
    finally:
        server.stop(9)


@pytest.mark.timeout(90)
def test_a_store_outage_is_a_few_lines_not_a_flood(tmp_path: Path, redis_process: RedisProcess) -> None:
    log = tmp_path / "serve.log"
    proc, _ = start("serve", tmp_path, log, HERALD_REDIS_URL=redis_process.url)
    try:
        time.sleep(1.0)
        redis_process.stop(9)
        time.sleep(5.0)  # every loop runs 10-20 rounds meanwhile
        redis_process.start()
        time.sleep(3.0)
    finally:
        stop(proc)
    lines = events(log)
    failed = Counter(str(e["loop"]) for e in lines if e["event"] in ("loop_step_failed", "kill_switch_feed_lost"))
    assert {"kill-switches", "scheduler", "aside"} <= set(failed), failed
    assert max(failed.values()) == 1, f"more than one line per loop within 30 s: {failed}"
    recovered = {str(e["loop"]) for e in lines if e["event"] == "loop_step_recovered"}
    assert set(failed) <= recovered, (failed, recovered)
    health = [e for e in lines if e["event"] == "health_changed"]
    assert [(e["serving"], e["level"]) for e in health] == [(False, "info"), (True, "info")]


def test_worker_offers_only_its_flags(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["worker", "--help"])
    worker = capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    serve = capsys.readouterr().out
    for name in ENV:
        flag = "--" + name.replace("_", "-") + " "
        assert flag in serve, flag
        assert (flag in worker) is (name not in API_ONLY), flag
    assert {"listen", "credentials", "max_in_flight", "deliver"} == API_ONLY


def test_a_worker_does_not_warn_about_sample_api_keys(tmp_path: Path, redis_process: RedisProcess) -> None:
    log = tmp_path / "worker.log"
    # The sample credentials are the default; a worker serves no API and reads none.
    proc, admin = start("worker", tmp_path, log, HERALD_REDIS_URL=redis_process.url)
    try:
        assert "herald_" in scrape(admin)
    finally:
        stop(proc)
    lines = events(log)
    assert any(e["event"] == "started" and e["role"] == "worker" for e in lines), lines
    assert not [e for e in lines if e["event"] == "sample_credentials"]
    assert not [e for e in lines if e["level"] in ("warning", "error") and e["event"] != "provider_sandboxed"], lines
