"""herald policy simulate: a day of traffic against one or two policy sets."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from gateway.simulate import DELAY_BUCKETS
from tests.conftest import POLICIES, ROOT

HERALD = [sys.executable, "-m", "gateway.cli.main", "policy", "simulate"]
TRAFFIC = ROOT / "examples" / "traffic-day.jsonl"


def rows(output: str) -> dict[str, list[int]]:
    """The outcome table (the first one, up to the first blank line)."""
    found = {}
    for line in output.split("\n\n")[0].splitlines():
        match = re.match(r"^(\S+)\s+(\S+)\s+(.+?)\s{2,}([-+\d,\s]+)$", line)
        if match and not line.startswith(("policy", "business")):
            found[f"{match[1]} {match[2]} {match[3].strip()}"] = [int(n.replace(",", "")) for n in match[4].split()]
    return found


def section(output: str, title: str) -> list[list[str]]:
    """The rows of the table under the line starting with ``title``, split on runs of
    two spaces or more (its header first)."""
    block = next(part for part in output.split("\n\n") if part.startswith(title))
    return [re.split(r"\s{2,}", line.strip()) for line in block.splitlines()[1:]]


def simulate(*folders: Path, cwd: Path = ROOT) -> str:
    args = [arg for folder in folders for arg in ("--policies", str(folder))]
    result = subprocess.run([*HERALD, *args, "--traffic", str(TRAFFIC)], capture_output=True, text=True, cwd=cwd)
    assert result.returncode == 0, result.stderr
    return result.stdout


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


def test_delays_of_the_sent_messages(tmp_path: Path) -> None:
    output = simulate(POLICIES)
    delays = section(output, "when the sent messages went out")
    assert delays[0] == ["category", "delay", str(POLICIES)]
    counted = {(row[0], row[1]): row[2] for row in delays[1:]}
    assert counted["basic", "at once (<1m)"] == str(rows(output)["logistics basic sent"][0])  # basic never waits
    sent_marketing = sum(v[0] for k, v in rows(output).items() if " marketing sent" in k)
    buckets = {name for name, _ in DELAY_BUCKETS}
    waited = sum(int(n) for (cat, delay), n in counted.items() if cat == "marketing" and delay in buckets)
    assert waited == sent_marketing  # every sent marketing message in one bucket
    assert counted["marketing", "median"].endswith("m") and counted["marketing", "median"] != "0s"  # windows wait


def shorter_evening_window(tmp_path: Path) -> Path:
    changed = tmp_path / "a-rather-long-folder-name-for-the-change"
    shutil.copytree(POLICIES, changed)
    path = changed / "defaults.yaml"
    path.write_text(path.read_text().replace('"18:00-22:00"', '"19:00-21:00"'))
    return changed


def test_time_shifts_and_whole_column_headers(tmp_path: Path) -> None:
    changed = shorter_evening_window(tmp_path)
    output = simulate(POLICIES, changed)
    header = output.splitlines()[2]
    assert header.split()[-3:] == [str(POLICIES), str(changed), "difference"]  # names whole, not cut
    for line in output.split("\n\n")[0].splitlines()[3:]:
        assert len(line) == len(header)  # the figures end under their header

    shifts = section(output, "time shifts")
    assert shifts[0] == [
        "category", "sent by both", "same time", "later", "median later", "most later",
        "earlier", "median earlier", "most earlier", "no longer sent", "newly sent",
    ]  # fmt: skip
    by_category = {row[0]: row for row in shifts[1:]}
    basic = by_category["basic"]
    assert basic[1] == basic[2] and basic[3] == basic[6] == "0"  # basic ignores send windows
    marketing = by_category["marketing"]
    both, same, later, earlier = (int(marketing[i]) for i in (1, 2, 3, 6))
    assert later > 0 and both == same + later + earlier  # the shorter window sends some later
    assert marketing[4].startswith("+") and marketing[5].startswith("+")


def test_the_documented_example_runs_as_written(tmp_path: Path) -> None:
    """README and docs/arbitration.md say: copy the policy, change it, simulate both.
    Their blocks run here verbatim, in a folder laid out like the repository."""
    shutil.copytree(POLICIES, tmp_path / "policies")
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    shim = bin_dir / "herald"
    shim.write_text(f'#!/bin/sh\nPYTHONPATH="{ROOT}" exec "{sys.executable}" -m gateway.cli.main "$@"\n')
    shim.chmod(0o755)
    blocks = [
        block
        for doc in ("README.md", "docs/arbitration.md")
        for block in re.findall(r"^```sh\n(.*?)^```", (ROOT / doc).read_text(), flags=re.M | re.S)
        if "my-change" in block
    ]
    assert len(blocks) == 2
    for block in blocks:
        shutil.rmtree(tmp_path / "my-change", ignore_errors=True)
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", block],
            cwd=tmp_path,
            env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        assert "time shifts, policies -> my-change" in result.stdout


def test_a_missing_folder_says_how_to_make_one() -> None:
    result = subprocess.run(
        [*HERALD, "--policies", str(POLICIES), "--policies", "no-such-change", "--traffic", str(TRAFFIC)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 2
    assert "no policy folder 'no-such-change'" in result.stderr and "cp -r" in result.stderr
