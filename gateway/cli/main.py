"""``herald``: run the gateway, check policies, import users, try the API by hand."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from gateway.cli import campaign, kill, preview
from gateway.cli import users as users_cli
from gateway.config import API_ONLY, ENV, from_env, shown_default

DEFAULT_TARGET = "127.0.0.1:50051"


def _add_client_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--target",
        default=os.environ.get("HERALD_TARGET", DEFAULT_TARGET),
        help=f"gateway gRPC address (env HERALD_TARGET; default {DEFAULT_TARGET})",
    )
    parser.add_argument(
        "--api-key",
        default=os.environ.get("HERALD_API_KEY", ""),
        help="your business unit's API key (env HERALD_API_KEY)",
    )
    parser.add_argument("--json", action="store_true", help="print the answer as JSON")


def _add_request_options(parser: argparse.ArgumentParser) -> None:
    """The fields of a push request that `send` and `policy explain` both take."""
    parser.add_argument("--scenario", "-s", required=True, help="scenario name, e.g. order.shipped")
    parser.add_argument("--user", "-u", required=True, help="user id")
    parser.add_argument(
        "--param", "-p", action="append", default=[], metavar="NAME=VALUE", help="template parameter (repeat)"
    )
    parser.add_argument("--campaign", default="", help="campaign id (marketing)")
    parser.add_argument("--dedup-key", default="", help="business dedup key")
    parser.add_argument("--priority", type=int, help="0-100 (default 50)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="herald",
        description="Herald: a multi-channel push gateway with priority arbitration.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    serve = commands.add_parser(
        "serve",
        help="run the gateway",
        description="Run the gateway until SIGTERM or SIGINT (SIGHUP reloads policies and credentials). "
        "Each flag overrides its environment variable.",
    )
    worker = commands.add_parser(
        "worker",
        help="run delivery only (no API), from the shared Redis queue",
        description="Take deliveries from the Redis delivery stream and send them, without serving the API, "
        "so that delivery scales apart from it. Needs --redis-url. Admin HTTP (/metrics, /healthz, /readyz) "
        "as for serve. The API's settings (gRPC address, credentials, calls in flight) are serve's only.",
    )
    for command in (serve, worker):
        for name, (env_name, text) in ENV.items():
            if command is worker and name in API_ONLY:
                continue
            command.add_argument(
                f"--{name.replace('_', '-')}",
                dest=name,
                default=None,
                help=f"{text} (env {env_name}; default {shown_default(name)})",
            )

    policy = commands.add_parser("policy", help="policy files").add_subparsers(
        dest="policy_command", metavar="ACTION", required=True
    )
    check = policy.add_parser(
        "check",
        help="validate a policy folder; exit 1 with every problem found",
        description="Validate a folder of policy files as the gateway would load it. Prints every "
        "problem as FILE: PATH: PROBLEM and exits 1, or prints the version and exits 0.",
    )
    check.add_argument(
        "directory", type=Path, nargs="?", default=Path("policies"), help="the policy folder (default: policies)"
    )
    schema = policy.add_parser(
        "schema",
        help="print or write the JSON Schema of a policy file (editor completion and checks)",
        description="Print the JSON Schema of one policy file, generated from the gateway's own model, or "
        "write it to --out. Point an editor at it with a first line "
        "'# yaml-language-server: $schema=<path to the schema>' in a policy file, as the samples in "
        "policies/ do. It checks each file's keys and values; what spans files only `herald policy check` can.",
    )
    schema.add_argument("--out", type=Path, help="write the schema to this file instead of printing it")
    simulate = policy.add_parser(
        "simulate",
        help="replay timestamped traffic against one or two policy sets and count the outcomes",
        description='Replay a JSON Lines file of timestamped requests ({"at", "bu", "request"}) and '
        'profiles ({"at", "user"}) against a policy set with the in-memory store and a simulated '
        "clock; print per business unit, category and outcome how many would be sent, still scheduled and "
        "suppressed, how long after their request the sent ones went out, and how many users received how "
        "many messages. With two --policies, side by side with the difference, and the time shifts: of the "
        "messages both sent, how many the second policy sends later or earlier, and by how much.",
    )
    simulate.add_argument("--policies", type=Path, action="append", required=True, help="policy folder (once or twice)")
    simulate.add_argument("--traffic", type=Path, required=True, help="JSON Lines traffic file")
    explain = policy.add_parser(
        "explain",
        help="print the whole decision trace for a user, scenario and time; sends nothing",
        description="Ask the gateway what Push would decide (PushService.Explain) on the user's current "
        "state at a given time, and print every step: rule, counter and value, competitor.",
    )
    _add_request_options(explain)
    explain.add_argument("--at", help="ISO-8601 time (default: now), e.g. 2026-11-11T23:00:00+08:00")
    _add_client_options(explain)

    send = commands.add_parser(
        "send",
        help="send one push request and print the decision",
        description="Call PushService.Push and print the decision.",
    )
    _add_request_options(send)
    send.add_argument("--request-id", help="idempotency key (default: a fresh one)")
    send.add_argument("--title", default="", help="free-text title (scenarios with free_text)")
    send.add_argument("--body", default="", help="free-text body")
    send.add_argument("--url", default="", help="free-text link")
    send.add_argument("--not-before", help="ISO-8601 time, e.g. 2026-11-11T08:00:00+08:00")
    send.add_argument("--deadline", help="ISO-8601 time")
    _add_client_options(send)

    status = commands.add_parser("status", help="show a message's decision and timeline (GetMessage)")
    status.add_argument("message_id", help="the message id Push answered with (m_...)")
    _add_client_options(status)

    info = commands.add_parser("info", help="show the serving policy version and your scenarios")
    _add_client_options(info)

    users = commands.add_parser("users", help="user profiles").add_subparsers(
        dest="users_command", metavar="ACTION", required=True
    )
    imp = users.add_parser(
        "import",
        help="bulk-import profiles from CSV or JSON Lines",
        description="Stream a CSV or JSON Lines file into the gateway (ProfileService.UpsertUsers). "
        "See docs/users-import.md for the columns.",
    )
    imp.add_argument("file", type=Path, help="a .csv or .jsonl file of profiles")
    imp.add_argument("--format", choices=["csv", "jsonl"], help="default: from the file name")
    imp.add_argument("--batch", type=int, default=500, help="users per call (1-1000, default 500)")
    imp.add_argument("--concurrency", type=int, default=4, help="calls in flight (default 4)")
    imp.add_argument("--tag-separator", default="|", help="what separates the tags in the CSV tags column (default |)")
    imp.add_argument("--rejects", type=Path, help="write every rejected row (line<TAB>reason) here")
    imp.add_argument("--quiet", action="store_true", help="no progress line")
    _add_client_options(imp)
    users_cli.add_parsers(users, _add_client_options)

    keys = commands.add_parser("keys", help="business-unit API keys").add_subparsers(
        dest="keys_command", metavar="ACTION", required=True
    )
    new = keys.add_parser(
        "new",
        help="make a new API key and print its credentials entry",
        description="Make an API key for a business unit the policy defines, print it once, and print the "
        "entry for the credentials file (its SHA-256 hash: the key itself is kept nowhere).",
    )
    new.add_argument("bu", help="business unit name, as the policy's business_units define it")
    new.add_argument(
        "--policy-dir",
        type=Path,
        default=Path(os.environ.get("HERALD_POLICY_DIR") or "policies"),
        help="the policy folder whose business units are checked (env HERALD_POLICY_DIR; default policies)",
    )
    new.add_argument("--label", help="the entry's label (default: created by herald keys new on <date>)")
    kill.add_parser(commands)
    campaign.add_parser(commands, _add_client_options)
    preview.add_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`herald preview ... | head`): what it wanted was printed.
        # Point stdout at nothing so that flushing it at exit does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _dispatch(args: argparse.Namespace) -> int:
    if args.command in ("serve", "worker"):
        from gateway.cli.serve import run

        try:
            settings = from_env(**{name: getattr(args, name, None) for name in ENV})
        except ValueError as exc:
            print(f"herald: {exc}", file=sys.stderr)
            return 2
        if args.command == "worker" and not settings.redis_url:
            print(
                "herald: worker needs the shared Redis queue: set --redis-url or HERALD_REDIS_URL "
                "(in the embedded in-memory mode, `herald serve` delivers by itself)",
                file=sys.stderr,
            )
            return 2
        return run(settings, api=args.command == "serve")
    if args.command == "policy" and args.policy_command == "check":
        from gateway.cli.policy import check

        return check(args.directory)
    if args.command == "policy" and args.policy_command == "schema":
        from gateway.cli.policy import schema

        return schema(args.out)
    if args.command == "policy" and args.policy_command == "simulate":
        from gateway.cli.policy import run_simulation

        return run_simulation(args.policies, args.traffic)
    if args.command == "policy" and args.policy_command == "explain":
        from gateway.cli import client

        try:
            return client.explain(
                args.target,
                args.api_key,
                user=args.user,
                scenario=args.scenario,
                at=args.at,
                params=args.param,
                campaign=args.campaign,
                dedup_key=args.dedup_key,
                priority=args.priority,
                as_json=args.json,
            )
        except client.ClientError as exc:
            print(f"herald: {exc}", file=sys.stderr)
            return 2
        except client.RpcFailed as exc:
            print(f"herald: {exc}", file=sys.stderr)
            return 1
    if args.command in ("send", "status", "info"):
        from gateway.cli import client

        try:
            if args.command == "send":
                return client.send(
                    args.target,
                    args.api_key,
                    scenario=args.scenario,
                    user=args.user,
                    params=args.param,
                    request_id=args.request_id,
                    title=args.title,
                    body=args.body,
                    url=args.url,
                    campaign=args.campaign,
                    dedup_key=args.dedup_key,
                    not_before=args.not_before,
                    deadline=args.deadline,
                    priority=args.priority,
                    as_json=args.json,
                )
            if args.command == "status":
                return client.status(args.target, args.api_key, args.message_id, args.json)
            return client.info(args.target, args.api_key, args.json)
        except client.ClientError as exc:
            print(f"herald: {exc}", file=sys.stderr)
            return 2
        except client.RpcFailed as exc:
            print(f"herald: {exc}", file=sys.stderr)
            return 1
    if args.command == "users" and args.users_command != "import":
        return users_cli.run(args)
    if args.command == "users":
        from gateway.cli import users_import

        if not args.api_key:
            print("herald: no API key: pass --api-key or set HERALD_API_KEY", file=sys.stderr)
            return 2
        if not args.file.is_file():
            print(f"herald: no file '{args.file}'", file=sys.stderr)
            return 2
        try:
            summary = asyncio.run(
                users_import.import_file(
                    args.file,
                    args.target,
                    args.api_key,
                    fmt=args.format,
                    batch_size=args.batch,
                    concurrency=args.concurrency,
                    keep_rejects=10**9 if args.rejects else 1000,
                    tag_separator=args.tag_separator,
                    progress_out=None if args.quiet else sys.stderr,
                )
            )
        except users_import.ImportError_ as exc:
            print(f"herald: {exc}", file=sys.stderr)
            return 2
        users_import.print_summary(summary)
        if args.rejects:
            users_import.write_rejects(summary, args.rejects)
        return 0 if summary.rejected_count == 0 else 1
    if args.command == "keys":
        from gateway.cli import keys

        return keys.new(args.bu, args.policy_dir, args.label)
    if args.command == "campaign":
        return campaign.run(args)
    if args.command == "kill":
        return kill.run(args)
    if args.command == "preview":
        return preview.run(args)
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
