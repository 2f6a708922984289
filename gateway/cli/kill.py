"""``herald kill``: set, clear, list kill switches and print their history, through a
gateway's admin API.

The token is ``--admin-token`` or ``HERALD_ADMIN_TOKEN``; without either, the local
gateway's own, from ``<data dir>/admin-token`` (``--data-dir`` or ``HERALD_DATA_DIR``,
default ``var``: the gateway's default), which a gateway started without a token makes
(``gateway/admin_token.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from gateway.admin_token import DEFAULT_DATA_DIR, TokenFileError, read_token, token_file
from gateway.config import ENV

DEFAULT_ADMIN = "http://127.0.0.1:9464"


def _add_options(parser: argparse.ArgumentParser, on_action: bool) -> None:
    """The options every ``kill`` action takes, before the action (``kill --json list``)
    or after it (``kill list --json``). On an action their defaults are SUPPRESS, so
    that an option given before the action is not reset by the action's default."""

    def default(value: object) -> object:
        return argparse.SUPPRESS if on_action else value

    parser.add_argument(
        "--admin-url",
        default=default(os.environ.get("HERALD_ADMIN_URL", DEFAULT_ADMIN)),
        help=f"a gateway's admin address (env HERALD_ADMIN_URL; default {DEFAULT_ADMIN})",
    )
    parser.add_argument(
        "--admin-token",
        default=default(os.environ.get("HERALD_ADMIN_TOKEN", "")),
        help="the gateway's admin token (env HERALD_ADMIN_TOKEN; prefer the variable: flags show in ps); "
        "neither: the local gateway's, from <data dir>/admin-token",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=default(Path(os.environ.get(ENV["data_dir"][0]) or DEFAULT_DATA_DIR)),
        help="where a local gateway started without a token keeps it, as admin-token "
        f"(env HERALD_DATA_DIR; default {DEFAULT_DATA_DIR}, the gateway's default)",
    )
    parser.add_argument("--json", action="store_true", default=default(False), help="print the answer as JSON")


def add_parser(commands: Any) -> None:
    kill = commands.add_parser(
        "kill",
        help="kill switches: stop a bad push everywhere within a second",
        description="Kill switches through a gateway's admin API (any replica: they share the store).",
    )
    _add_options(kill, on_action=False)
    actions = kill.add_subparsers(dest="kill_command", metavar="ACTION", required=True)
    put = actions.add_parser("set", help="set a switch")
    put.add_argument("--scope", required=True, choices=["global", "category", "channel", "bu", "scenario", "campaign"])
    put.add_argument("--value", default="", help="which category, channel, BU, scenario or campaign")
    put.add_argument("--reason", required=True, help="why (shown in every decision it stops)")
    put.add_argument("--actor", required=True, help="who sets it")
    put.add_argument("--for", dest="expires_in", default="", help="expire after this long, e.g. 30m, 2h")
    clear = actions.add_parser("clear", help="clear a switch (what it kept and is still in time is sent)")
    clear.add_argument("switch_id", help="the switch's id, as `herald kill list` shows it")
    clear.add_argument("--actor", required=True, help="who clears it")
    clear.add_argument("--note", default="", help="why")
    listing = actions.add_parser("list", help="the active switches")
    history = actions.add_parser("history", help="every change, most recent first")
    history.add_argument("--limit", type=int, default=50, help="at most this many changes (default 50)")
    for action in (put, clear, listing, history):
        _add_options(action, on_action=True)


def _token(args: argparse.Namespace) -> str:
    """The token given, or else the local gateway's (its file is named, never its content)."""
    if args.admin_token:
        return str(args.admin_token)
    path = token_file(args.data_dir)
    try:
        return read_token(path)
    except FileNotFoundError:
        raise SystemExit(
            f"herald: no admin token: set HERALD_ADMIN_TOKEN to the gateway's token, or, for a gateway on this "
            f"machine started without one, point --data-dir (HERALD_DATA_DIR) at its data folder ({path} does not "
            "exist)"
        ) from None
    except (OSError, UnicodeDecodeError, TokenFileError) as exc:
        raise SystemExit(f"herald: cannot read the local admin token: {exc}") from None


def _call(args: argparse.Namespace, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    request = urllib.request.Request(
        args.admin_url.rstrip("/") + path,
        data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers={"Authorization": f"Bearer {_token(args)}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return json.loads(answer.read() or b"{}")
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read()).get("error", exc.reason)
        except ValueError:
            message = exc.reason
        raise SystemExit(f"herald: {message} (HTTP {exc.code})") from None
    except urllib.error.URLError as exc:
        raise SystemExit(
            f"herald: no gateway admin API at {args.admin_url} ({exc.reason}); set --admin-url or HERALD_ADMIN_URL"
        ) from None


def _line(switch: dict[str, Any]) -> str:
    scope = "global" if switch["scope"] == "global" else f"{switch['scope']}={switch['value']}"
    until = f" until {switch['expires_at']}" if switch.get("expires_at") else ""
    return f"{switch['id']}  {scope}  by {switch['actor']} at {switch['created_at']}{until}: {switch['reason']}"


def run(args: argparse.Namespace) -> int:
    if args.kill_command == "set":
        body = {"scope": args.scope, "value": args.value, "reason": args.reason, "actor": args.actor}
        if args.expires_in:
            body["expires_in"] = args.expires_in
        answer = _call(args, "POST", "/admin/kill-switches", body)
        print(json.dumps(answer) if args.json else f"set {_line(answer['switch'])}")
    elif args.kill_command == "clear":
        answer = _call(
            args, "DELETE", f"/admin/kill-switches/{args.switch_id}", {"actor": args.actor, "note": args.note}
        )
        print(json.dumps(answer) if args.json else f"cleared {_line(answer['cleared'])}")
    elif args.kill_command == "list":
        answer = _call(args, "GET", "/admin/kill-switches")
        if args.json:
            print(json.dumps(answer))
        else:
            print("\n".join(_line(s) for s in answer["switches"]) or "no active kill switch")
    else:
        answer = _call(args, "GET", f"/admin/kill-switches/audit?limit={args.limit}")
        if args.json:
            print(json.dumps(answer))
        for entry in [] if args.json else answer["audit"]:
            note = f" ({entry['note']})" if entry.get("note") else ""
            print(f"{entry['at']}  {entry['action']:5}  by {entry['actor']}{note}: {_line(entry['switch'])}")
    sys.stdout.flush()
    return 0
