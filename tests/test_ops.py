"""ops/: the alert rules pass promtool and their unit tests (ops/alerts_test.yml: every
alert fired by some input series and left quiet by others), the dashboard is a loadable Grafana dashboard
whose every query names metrics Herald exports, every metric is documented, and the
runbook covers every alert."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import yaml

from gateway.metrics import fresh_metrics
from tests.conftest import ROOT

OPS = ROOT / "ops"
METRIC_RE = re.compile(r"\bherald_[a-z_]+\b")


def exported() -> tuple[set[str], set[str]]:
    """Herald's metric families, and every sample name they export (with suffixes)."""
    metrics = fresh_metrics()
    metrics.prime(["order"], ["wechat"])
    families, samples = set(), set()
    for family in metrics.registry.collect():
        families.add(family.name)
        samples |= {sample.name for sample in family.samples}
    # Histograms export _bucket/_sum/_count only once observed; name them all.
    for family in metrics.registry.collect():
        samples.add(family.name)
        if family.type == "histogram":
            samples |= {f"{family.name}_bucket", f"{family.name}_sum", f"{family.name}_count"}
        if family.type == "counter":
            samples.add(f"{family.name}_total")
    return families, samples


def test_alert_rules_pass_promtool() -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: run scripts/test (it installs Debian's prometheus package)"
    result = subprocess.run([promtool, "check", "rules", str(OPS / "alerts.yml")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_alert_rules_unit_tests_pass() -> None:
    """ops/alerts_test.yml: input series that fire each alert, and series that do not."""
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: run scripts/test (it installs Debian's prometheus package)"
    result = subprocess.run(
        [promtool, "test", "rules", str(OPS / "alerts_test.yml")], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    alerts = {r["alert"] for g in yaml.safe_load((OPS / "alerts.yml").read_text())["groups"] for r in g["rules"]}
    suite = yaml.safe_load((OPS / "alerts_test.yml").read_text())
    assert suite["rule_files"] == ["alerts.yml"]
    fires: set[str] = set()
    quiet: set[str] = set()
    for test in suite["tests"]:
        for case in test.get("alert_rule_test", []):
            assert case["alertname"] in alerts, f"{test['name']}: no alert {case['alertname']} in alerts.yml"
            (fires if case.get("exp_alerts") else quiet).add(case["alertname"])
            for expected in case.get("exp_alerts") or []:
                # the rendered annotations are checked, so each firing case states them
                assert {"summary", "runbook"} <= set(expected.get("exp_annotations", {})), test["name"]
    assert not alerts - fires, f"alerts with no case that fires them: {sorted(alerts - fires)}"
    assert not alerts - quiet, f"alerts with no case that leaves them quiet: {sorted(alerts - quiet)}"


def test_alert_rules_name_real_metrics_and_have_a_runbook_entry() -> None:
    _, samples = exported()
    runbook = (OPS / "runbook.md").read_text()
    anchors = {line[4:].strip().lower() for line in runbook.splitlines() if line.startswith("### ")}
    rules = [r for g in yaml.safe_load((OPS / "alerts.yml").read_text())["groups"] for r in g["rules"]]
    assert len(rules) >= 8
    for rule in rules:
        assert set(METRIC_RE.findall(rule["expr"])) <= samples, rule["alert"]
        assert rule["alert"].lower() in anchors, f"no runbook section for {rule['alert']}"
        assert rule["annotations"]["runbook"].endswith("#" + rule["alert"].lower())


def test_dashboard_loads_and_queries_exported_metrics() -> None:
    dashboard = json.loads((OPS / "dashboard.json").read_text())
    assert dashboard["title"] and dashboard["uid"] and isinstance(dashboard["schemaVersion"], int)
    families, samples = exported()
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    named: set[str] = set()
    for panel in panels:
        assert panel["type"] in {"timeseries", "stat", "gauge", "table", "bargauge"}
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"])
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            found = set(METRIC_RE.findall(target["expr"]))
            assert found, f"{panel['title']}: a query with no Herald metric"
            assert found <= samples, f"{panel['title']}: {found - samples} not exported"
            named |= found
    # Every metric Herald exports has a panel.
    shown = {re.sub(r"_(bucket|sum|count|total)$", "", n) for n in named}
    assert families <= shown | {f.removesuffix("_total") for f in shown}, families - shown


def test_every_metric_is_documented() -> None:
    families, _ = exported()
    docs = (ROOT / "README.md").read_text()
    for family in families:
        assert family in docs, f"{family} is not in the README's metrics table"
