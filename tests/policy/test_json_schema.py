"""The JSON Schema of policy files (``herald policy schema``): the committed copy is what
the model generates, every sample file points editors to it and passes it, and it
catches the mistakes an editor should underline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from gateway.cli.main import main
from gateway.policy.schema import SCHEMA_FILE, json_schema, json_schema_text
from tests.conftest import POLICIES, ROOT

COMMITTED = POLICIES / SCHEMA_FILE
REGENERATE = f"herald policy schema --out {COMMITTED.relative_to(ROOT)}"
MODELINE = "# yaml-language-server: $schema="


def samples() -> list[Path]:
    files = sorted(p for p in POLICIES.rglob("*") if p.suffix in (".yaml", ".yml"))
    assert files
    return files


def validator() -> jsonschema.protocols.Validator:
    schema = json.loads(COMMITTED.read_text(encoding="utf-8"))
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def test_committed_schema_is_what_the_model_generates() -> None:
    assert COMMITTED.is_file(), f"{COMMITTED.relative_to(ROOT)} is missing: run `{REGENERATE}`"
    assert COMMITTED.read_text(encoding="utf-8") == json_schema_text(), (
        f"{COMMITTED.relative_to(ROOT)} differs from the policy model (gateway/policy/schema.py): "
        f"regenerate it with `{REGENERATE}` (in the virtualenv: .venv/bin/{REGENERATE}) and commit it"
    )


def test_schema_declares_its_dialect_and_is_valid() -> None:
    schema = json_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["additionalProperties"] is False
    validator()  # check_schema raises on an invalid schema


@pytest.mark.parametrize("path", samples(), ids=lambda p: str(p.relative_to(POLICIES)))
def test_every_sample_file_points_to_the_schema_and_passes_it(path: Path) -> None:
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith(MODELINE), f"{path.relative_to(ROOT)}: first line must be `{MODELINE}<schema>`"
    target = first.removeprefix(MODELINE).strip()
    assert not Path(target).is_absolute() and "://" not in target, target
    assert (path.parent / target).resolve() == COMMITTED.resolve(), f"{path.relative_to(ROOT)}: {target}"
    errors = list(validator().iter_errors(yaml.safe_load(path.read_text(encoding="utf-8"))))
    assert not errors, [f"{list(e.absolute_path)}: {e.message}" for e in errors]


def errors_for(document: dict[str, Any]) -> list[str]:
    """Where the schema finds fault, with the paths inside an ``anyOf`` (an optional
    section) that failed."""

    def paths(errors: Any) -> list[str]:
        return [p for e in errors for p in [".".join(str(p) for p in e.absolute_path), *paths(e.context or [])]]

    return paths(validator().iter_errors(document))


@pytest.mark.parametrize(
    ("document", "where"),
    [
        ({"defaultz": {}}, ""),  # a misspelt section
        ({"defaults": {"timezone": "Asia/Shanghai", "idempotency_windw": "24h"}}, "defaults"),
        ({"defaults": {"idempotency_window": "24 hours"}}, "defaults.idempotency_window"),
        ({"defaults": {"idempotency_window": 24}}, "defaults.idempotency_window"),
        ({"defaults": {"send_windows": ["7:30-9:30"]}}, "defaults.send_windows.0"),
        ({"categories": {"promo": {"fail_mode": "open"}}}, "categories"),
        ({"categories": {"basic": {"fail_mode": "maybe"}}}, "categories.basic.fail_mode"),
        (
            {"categories": {"reminder": {"caps": [{"window": "fortnight", "limit": 1}]}}},
            "categories.reminder.caps.0.window",
        ),
        (
            {"categories": {"reminder": {"quiet_hours": {"mode": "defer", "start": 2200}}}},
            "categories.reminder.quiet_hours.start",
        ),
        ({"channels": {"SMS": {"cost": 0.05, "reach": 1.5, "provider": "aliyun"}}}, "channels.SMS.reach"),
        ({"providers": {"sms": {"type": "carrier_pigeon"}}}, "providers.sms"),
    ],
)
def test_schema_catches_what_an_editor_should_underline(document: dict[str, Any], where: str) -> None:
    assert where in errors_for(document)


@pytest.mark.parametrize(
    "document",
    [
        {"defaults": {"idempotency_window": "90s", "send_windows": ["22:00-02:00"], "max_hold": "2w"}},
        {"categories": {"marketing": {"caps": [{"window": "week", "limit": 2}, {"window": "24h", "limit": 1}]}}},
        {"categories": {"reminder": {"quiet_hours": {"mode": "defer", "start": "22:00", "end": "08:00"}}}},
        {},
    ],
)
def test_schema_takes_what_the_gateway_takes(document: dict[str, Any]) -> None:
    assert errors_for(document) == []


def test_cli_prints_and_writes_the_schema(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "schema"]) == 0
    assert capsys.readouterr().out == json_schema_text()
    out = tmp_path / "schema.json"
    assert main(["policy", "schema", "--out", str(out)]) == 0
    assert out.read_text(encoding="utf-8") == json_schema_text()
    assert main(["policy", "schema", "--out", str(tmp_path / "missing" / "schema.json")]) == 2
    assert "cannot write" in capsys.readouterr().err


def test_policy_check_passes_on_the_samples_with_their_modelines(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "check", str(POLICIES)]) == 0
    assert capsys.readouterr().out.startswith("ok: policy ")
