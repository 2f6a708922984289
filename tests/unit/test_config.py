"""Settings (gateway/config.py): flags over HERALD_* variables over defaults, booleans as
people write them, and tokens and keys that never print."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import structlog

from gateway.cli.main import main
from gateway.config import ENV, SECRETS, Settings, from_env
from gateway.logs import _LINES, configure

TOKEN = "adm1n-t0ken-that-must-never-print"
KEY = "unsubscribe-key-that-must-never-print-0123456789"
PASSWORD = "redis-passw0rd-never-shown"
BOOLEANS = [name for name in ENV if isinstance(getattr(Settings(), name), bool)]


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        *[(word, True) for word in ("on", "1", "yes", "true", "ON", "Yes", "TRUE", "True", "y", "t")],
        *[(word, False) for word in ("off", "0", "no", "false", "OFF", "No", "FALSE", "False", "n", "f")],
    ],
)
@pytest.mark.parametrize("name", BOOLEANS)
def test_booleans_parse_as_people_write_them(name: str, raw: str, value: bool) -> None:
    assert getattr(from_env({ENV[name][0]: raw}), name) is value  # from the environment
    assert getattr(from_env({}, **{name: raw}), name) is value  # from a flag


@pytest.mark.parametrize("raw", ["maybe", "2", "enabled", "tru", "-1"])
def test_a_word_that_is_not_a_boolean_is_an_error_not_false(raw: str) -> None:
    with pytest.raises(ValueError) as caught:
        from_env({"HERALD_SANDBOX": raw})
    assert str(caught.value) == (
        f"HERALD_SANDBOX (--sandbox): {raw!r} is not a boolean; use on/off, true/false, yes/no or 1/0"
    )


def test_all_booleans_are_covered() -> None:
    assert set(BOOLEANS) == {"redis_cluster", "deliver", "sandbox", "campaigns"}


def test_flags_override_variables_override_defaults() -> None:
    environ = {"HERALD_DELIVERY_WORKERS": "7", "HERALD_LISTEN": "0.0.0.0:1", "HERALD_GRACE_SECONDS": "2.5"}
    settings = from_env(environ, listen="127.0.0.1:2", delivery_workers=None)
    assert settings.listen == "127.0.0.1:2"  # the flag
    assert settings.delivery_workers == 7  # the variable (the flag was not given)
    assert settings.grace_seconds == 2.5
    assert settings.max_in_flight == 256  # the default
    assert isinstance(from_env({"HERALD_POLICY_DIR": "p"}).policy_dir, Path)


def test_an_empty_variable_is_an_unset_one() -> None:
    settings = from_env({"HERALD_SANDBOX": "", "HERALD_PROCESSES": "", "HERALD_ADMIN_TOKEN": ""})
    assert settings.sandbox is True and settings.processes == 1
    assert settings.admin_token.get_secret_value() == ""


def test_bad_values_name_the_variable_and_the_flag() -> None:
    with pytest.raises(ValueError) as caught:
        from_env({"HERALD_DELIVERY_WORKERS": "many", "HERALD_RECLAIM_SECONDS": "soon", "HERALD_LOG_FORMAT": "xml"})
    text = str(caught.value)
    assert "HERALD_DELIVERY_WORKERS (--delivery-workers): 'many' is not a valid int" in text
    assert "HERALD_RECLAIM_SECONDS (--reclaim-seconds): 'soon' is not a valid number" in text
    assert "HERALD_LOG_FORMAT (--log-format): 'xml'" in text and "json" in text


def test_log_level_and_format_in_any_case() -> None:
    settings = from_env({"HERALD_LOG_LEVEL": "debug", "HERALD_LOG_FORMAT": "Console"})
    assert (settings.log_level, settings.log_format) == ("DEBUG", "console")


def test_only_documented_variables_are_read() -> None:
    # reuse_port is for `serve --processes` children, not a setting anyone makes.
    assert "reuse_port" not in ENV
    assert from_env({"HERALD_REUSE_PORT": "1"}).reuse_port is False


def test_settings_built_directly_read_no_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HERALD_LISTEN", "0.0.0.0:1")
    assert Settings().listen == "127.0.0.1:50051"
    assert from_env().listen == "0.0.0.0:1"  # from_env reads this process's environment


def test_replace_validates_like_the_constructor() -> None:
    settings = Settings().replace(admin_token=TOKEN, processes="3")
    assert settings.admin_token.get_secret_value() == TOKEN and settings.processes == 3


def secret_settings() -> Settings:
    return from_env(
        {
            "HERALD_ADMIN_TOKEN": TOKEN,
            "HERALD_UNSUBSCRIBE_KEY": KEY,
            "HERALD_REDIS_URL": f"redis://:{PASSWORD}@127.0.0.1:6379/0",
        }
    )


def assert_hidden(text: str) -> None:
    assert TOKEN not in text and KEY not in text and PASSWORD not in text, text


def test_secrets_are_secret_types() -> None:
    assert {"admin_token", "unsubscribe_key"} <= SECRETS


def test_secrets_never_print() -> None:
    settings = secret_settings()
    assert settings.admin_token.get_secret_value() == TOKEN  # the code that uses it gets it
    assert settings.unsubscribe_key.get_secret_value() == KEY
    for text in (repr(settings), str(settings), f"{settings}", settings.model_dump_json(), str(settings.model_dump())):
        assert_hidden(text)
    assert "redis://127.0.0.1:6379/0" in repr(settings)  # the URL shows, without its password


def test_secrets_never_reach_the_logs(capsys: pytest.CaptureFixture[str]) -> None:
    settings = secret_settings()
    configure("INFO", json=True)
    log = structlog.get_logger("test")
    log.info("settings", settings=settings, admin_token=settings.admin_token, detail=str(settings))
    _LINES.flush()
    line = capsys.readouterr().err
    assert json.loads(line.splitlines()[-1])["event"] == "settings"
    assert_hidden(line)


@pytest.mark.parametrize(
    ("command", "option"),
    [
        (["serve"], "--admin-token"),
        (["worker"], "--admin-token"),
        (["kill", "list"], "--admin-token"),
        (["send"], "--api-key"),
    ],
)
def test_help_shows_no_secret(
    command: list[str], option: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HERALD_ADMIN_TOKEN", TOKEN)
    monkeypatch.setenv("HERALD_API_KEY", TOKEN)
    monkeypatch.setenv("HERALD_UNSUBSCRIBE_KEY", KEY)
    monkeypatch.setenv("HERALD_REDIS_URL", f"redis://:{PASSWORD}@127.0.0.1:6379/0")
    with pytest.raises(SystemExit) as exited:
        main([*command, "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert option in out
    assert_hidden(out)


def test_a_bad_flag_is_named_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--sandbox", "perhaps"]) == 2
    assert "HERALD_SANDBOX (--sandbox): 'perhaps' is not a boolean" in capsys.readouterr().err
