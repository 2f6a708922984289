"""herald policy simulate: a day of traffic against one or two policy sets."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import POLICIES, ROOT

HERALD = [sys.executable, "-m", "gateway.cli.main", "policy", "simulate"]
TRAFFIC = ROOT / "examples" / "traffic-day.jsonl"


def rows(output: str) -> dict[str, list[int]]:
    found = {}
    for line in output.splitlines():
        match = re.match(r"^(\S+)\s+(\S+)\s+(.+?)\s{2,}([-+\d,\s]+)$", line)
        if match and not line.startswith(("policy", "business")):
            found[f"{match[1]} {match[2]} {match[3].strip()}"] = [int(n.replace(",", "")) for n in match[4].split()]
    return found


def test_one_policy_set(tmp_path: Path) -> None:
    result = subprocess.run(
        [*HERALD, "--policies", str(POLICIES), "--traffic", str(TRAFFIC)], capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    table = rows(result.stdout)
    requests = int(re.search(r"(\d+) requests", result.stdout)[1])  # type: ignore[index]
    assert sum(v[0] for v in table.values()) == requests  # every request lands in exactly one row
    assert table["logistics basic sent"][0] > 0  # transactional messages are never capped away
    assert table["marketing marketing suppressed QUIET_HOURS"][0] > 0  # the midnight presale blast is dropped
    assert "messages received per user:" in result.stdout


def test_two_policy_sets_show_the_difference(tmp_path: Path) -> None:
    looser = tmp_path / "looser"
    shutil.copytree(POLICIES, looser)
    path = looser / "categories.yaml"
    # Hibernating users get no marketing at all in the sample; let them have one a day.
    path.write_text(path.read_text().replace("at_risk: 1, hibernating: 0}", "at_risk: 1, hibernating: 1}"))
    result = subprocess.run(
        [*HERALD, "--policies", str(POLICIES), "--policies", str(looser), "--traffic", str(TRAFFIC)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    table = rows(result.stdout)
    sent = [v for k, v in table.items() if k.endswith("marketing sent")]
    assert sum(v[1] for v in sent) > sum(v[0] for v in sent)  # a looser cap sends more marketing
    for values in table.values():
        assert values[2] == values[1] - values[0]


def test_bad_traffic_names_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"at": "2026-11-11T08:00:00+08:00", "bu": "growth", "request": {"userId": "u"}}\n{"at": "noon"}\n')
    result = subprocess.run(
        [*HERALD, "--policies", str(POLICIES), "--traffic", str(bad)], capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == 2
    assert "bad.jsonl:2:" in result.stderr
