"""``herald preview``: what each channel of a scenario would send, with the checks the
request and the providers would apply; nothing is sent, and no gateway is needed (the
policy is read from its folder)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from gateway.core.locales import LOCALE_RE
from gateway.core.message_preview import strings
from gateway.errors import PolicyError
from gateway.values.claims import Content
from gateway.values.domain import Channel


def add_parser(commands: Any) -> None:
    preview = commands.add_parser(
        "preview",
        help="render what each channel of a scenario would send, with the providers' checks; sends nothing",
        description="Render a scenario's content for the given params (and free text) as a delivery would, "
        "per channel: WeChat template fields, customer-service text or news, the mass-send media, the SMS "
        "template and its params, the email's subject, text and HTML, the push title, body and link; in the "
        "content a user with --locale would get. Each channel is checked as Push checks the request and as its "
        "provider checks the content (field lengths, line breaks, SMS variable lengths, guard words in basic "
        "and reminder content). Reads the policy folder: no gateway runs, nothing is sent. Exit 1 when "
        "something would be refused.",
    )
    preview.add_argument("--scenario", "-s", required=True, help="scenario name, e.g. order.shipped")
    preview.add_argument(
        "--param", "-p", action="append", default=[], metavar="NAME=VALUE", help="template parameter (repeat)"
    )
    preview.add_argument(
        "--locale", default="", help="the user's locale, e.g. en-GB (default: none, the default content)"
    )
    preview.add_argument(
        "--channel",
        action="append",
        default=[],
        choices=[c.value for c in Channel],
        metavar="CHANNEL",
        help="only this channel (repeat; default: every channel of the scenario): "
        + ", ".join(c.value for c in Channel),
    )
    preview.add_argument("--title", default="", help="free-text title (scenarios with free_text)")
    preview.add_argument("--body", default="", help="free-text body")
    preview.add_argument("--url", default="", help="free-text link")
    preview.add_argument(
        "--policy-dir",
        type=Path,
        default=Path(os.environ.get("HERALD_POLICY_DIR") or "policies"),
        help="the policy folder (env HERALD_POLICY_DIR; default policies)",
    )
    preview.add_argument("--json", action="store_true", help="print the preview as JSON")


def _lines(key: str, value: str, width: int) -> list[str]:
    first, *rest = value.split("\n") if value else ["(empty)"]
    return [f"  {key:<{width}}  {first}", *(f"  {'':<{width}}  {line}" for line in rest)]


def run(args: argparse.Namespace) -> int:
    from gateway.cli.client import ClientError, parse_params
    from gateway.core.message_preview import preview
    from gateway.policy.loader import load_policy

    try:
        params = parse_params(args.param)
    except ClientError as exc:
        print(f"herald: {exc}", file=sys.stderr)
        return 2
    if args.locale and not LOCALE_RE.match(args.locale):
        print(f"herald: --locale '{args.locale}' is not a locale tag such as en, en-GB or zh-CN", file=sys.stderr)
        return 2
    try:
        policy = load_policy(args.policy_dir)
    except PolicyError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(
            f"herald: the policy in {args.policy_dir} does not load; fix it first (herald policy check)",
            file=sys.stderr,
        )
        return 2
    scenario = policy.scenarios.get(args.scenario)
    if scenario is None:
        known = ", ".join(sorted(policy.scenarios))
        print(f"herald: no scenario '{args.scenario}' in {args.policy_dir}; scenarios: {known}", file=sys.stderr)
        return 2
    channels = [Channel(name) for name in args.channel]
    unlisted = [str(c) for c in channels if c not in scenario.channels]
    if unlisted:
        listed = ", ".join(str(c) for c in scenario.channels)
        print(
            f"herald: {args.scenario} does not send on {', '.join(unlisted)}; its channels: {listed}", file=sys.stderr
        )
        return 2
    content = Content(title=args.title, body=args.body, url=args.url)
    shown = preview(policy, args.scenario, params, content, args.locale, channels)
    errors, warnings = shown.count("error"), shown.count("warning")
    if args.json:
        print(
            json.dumps(
                {
                    "scenario": shown.scenario,
                    "category": str(shown.category),
                    "policy_version": shown.policy_version,
                    "locale": shown.locale,
                    "content_locale": shown.content_locale,
                    "request": [f._asdict() for f in shown.request],
                    "channels": [
                        {
                            "channel": str(c.channel),
                            "provider": c.provider,
                            "content_locale": c.content_locale,
                            "payload": c.payload,
                            "findings": [f._asdict() for f in c.findings],
                        }
                        for c in shown.channels
                    ],
                    "errors": errors,
                    "warnings": warnings,
                },
                ensure_ascii=False,
                indent=2,
            )
        )
        return 1 if errors else 0
    if args.locale:
        picked = f"content locales.{shown.content_locale}" if shown.content_locale else "the default content"
        said = f"; locale {args.locale}: {picked}"
    else:
        said = "; no locale: the default content"
    print(f"{shown.scenario} ({shown.category}), policy {shown.policy_version}{said}")
    for finding in shown.request:
        print(f"  {finding.level}  {finding.where}: {finding.text}")
    for channel in shown.channels:
        which = f"locales.{channel.content_locale}" if channel.content_locale else "default"
        print(f"\n{channel.channel}  via {channel.provider or '?'}  ({which} content)")
        rows = list(strings(channel.payload))
        width = max((len(key) for key, _ in rows), default=0)
        for key, value in rows:
            print("\n".join(_lines(key, value, width)))
        for finding in channel.findings:
            print(f"  {finding.level}  {finding.where}: {finding.text}")
    print(f"\nnothing sent: {errors} error(s), {warnings} warning(s)")
    return 1 if errors else 0
