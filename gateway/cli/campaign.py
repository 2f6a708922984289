"""``herald campaign``: create, start (with a progress bar), watch, pause, resume,
cancel, list and report campaigns through CampaignService."""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path
from typing import IO, Any

import grpc
import yaml
from google.protobuf import json_format

from gateway.cli.client import ClientError, channel, explain_rpc_error, metadata, parse_time
from gateway.cli.progress import ProgressLine
from gateway.durations import format_duration, parse_duration
from gateway.tables import table
from herald.v1 import campaign_pb2, campaign_pb2_grpc

SPEC_KEYS = {
    "id", "campaign_id", "scenario", "audience", "variants", "holdout", "start_at", "deadline", "priority",
    "params", "description", "test",
}  # fmt: skip
VARIANT_KEYS = {"name", "weight", "params", "content"}
STATE_NAMES = {v: k.removeprefix("CAMPAIGN_STATE_") for k, v in campaign_pb2.CampaignState.items()}
REPORT_COLUMNS = (
    "variant", "targeted", "suppressed", "scheduled", "accepted", "sent", "delivered", "failed", "clicked",
    "converted", "unsubscribed", "reach_rate", "click_rate", "conversion_rate", "push_effect",
)  # fmt: skip


class CampaignFailed(Exception):
    pass


CAMPAIGN_ID_HELP = "the campaign's id (the id in its spec; `herald campaign list` shows them)"


def add_parser(commands: Any, add_client_options: Any) -> None:
    campaign = commands.add_parser(
        "campaign",
        help="campaigns: an audience, variants, a run and its funnel",
        description="Campaigns through CampaignService (docs/campaigns.md walks through one).",
    )
    actions = campaign.add_subparsers(dest="campaign_command", metavar="ACTION", required=True)
    create = actions.add_parser("create", help="create a campaign from a YAML or JSON file (state DRAFT)")
    create.add_argument("file", type=Path, help="the campaign spec, YAML or JSON (examples/campaign.yaml)")
    start = actions.add_parser("start", help="start a campaign and show its progress until every user is decided")
    start.add_argument("campaign_id", help=CAMPAIGN_ID_HELP)
    start.add_argument("--no-wait", action="store_true", help="return once started")
    for name, what in (
        ("status", "where a campaign stands"),
        ("pause", "stop the scan where it is"),
        ("resume", "go on from where it stopped"),
        ("cancel", "stop for good; queued and held messages end CANCELLED"),
    ):
        actions.add_parser(name, help=what).add_argument("campaign_id", help=CAMPAIGN_ID_HELP)
    watch = actions.add_parser("watch", help="show a running campaign's progress until it ends")
    watch.add_argument("campaign_id", help=CAMPAIGN_ID_HELP)
    report = actions.add_parser("report", help="the funnel: a table, --json or --csv")
    report.add_argument("campaign_id", help=CAMPAIGN_ID_HELP)
    report.add_argument("--csv", action="store_true", help="one CSV row a variant")
    listing = actions.add_parser("list", help="your campaigns, newest first")
    listing.add_argument("--limit", type=int, default=50)
    preview = actions.add_parser("preview", help="count an audience and show a few of its users; starts nothing")
    preview.add_argument("audience", help="an audience expression or the name of one in policy")
    preview.add_argument("--sample", type=int, default=5)
    for sub in (
        create,
        start,
        watch,
        report,
        listing,
        preview,
        *(actions.choices[n] for n in ("status", "pause", "resume", "cancel")),
    ):
        add_client_options(sub)


# --- the spec file -------------------------------------------------------------------
def spec_from_file(path: Path) -> campaign_pb2.CampaignSpec:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ClientError(f"cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ClientError(f"{path}: not YAML or JSON ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ClientError(f"{path}: write a mapping with id, scenario, audience and variants")
    unknown = sorted(set(data) - SPEC_KEYS)
    if unknown:
        raise ClientError(f"{path}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(SPEC_KEYS))}")
    spec = campaign_pb2.CampaignSpec(
        campaign_id=str(data.get("id", data.get("campaign_id", ""))),
        scenario=str(data.get("scenario", "")),
        audience=str(data.get("audience", "")),
        description=str(data.get("description", "")),
        params=_strings(data.get("params") or {}, f"{path}: params"),
    )
    try:
        spec.holdout = float(data.get("holdout", 0))
        if "priority" in data:
            spec.priority = int(data["priority"])
    except (TypeError, ValueError):
        raise ClientError(f"{path}: holdout is a share (0.1) and priority a whole number") from None
    for key in ("start_at", "deadline"):
        if data.get(key):
            when = data[key]
            getattr(spec, key).FromDatetime(parse_time(when if isinstance(when, str) else when.isoformat(), key))
    test = data.get("test")
    if test is not None:
        if not isinstance(test, dict) or set(test) - {"sample", "wait", "metric"}:
            raise ClientError(f"{path}: test takes sample (a share), wait (e.g. 30m) and metric")
        try:
            spec.test.sample = float(test.get("sample", 0))
            spec.test.wait.FromTimedelta(parse_duration(str(test.get("wait", "0s"))))
        except (TypeError, ValueError) as exc:
            raise ClientError(f"{path}: test: {exc}") from None
        spec.test.metric = str(test.get("metric", "click_rate"))
    variants = data.get("variants") or [{"name": "A", "weight": 1}]
    if not isinstance(variants, list):
        raise ClientError(f"{path}: variants is a list of {{name, weight, params, content}}")
    for index, item in enumerate(variants):
        if not isinstance(item, dict) or set(item) - VARIANT_KEYS:
            raise ClientError(f"{path}: variants[{index}] takes only {', '.join(sorted(VARIANT_KEYS))}")
        variant = spec.variants.add(name=str(item.get("name", "")), weight=int(item.get("weight", 1)))
        variant.params.update(_strings(item.get("params") or {}, f"{path}: variants[{index}].params"))
        content = item.get("content")
        if content:
            if not isinstance(content, dict):
                raise ClientError(f"{path}: variants[{index}].content takes title, body and url")
            variant.content.title = str(content.get("title", ""))
            variant.content.body = str(content.get("body", ""))
            variant.content.url = str(content.get("url", ""))
    return spec


def _strings(mapping: object, where: str) -> dict[str, str]:
    if not isinstance(mapping, dict):
        raise ClientError(f"{where} is a mapping of names to values")
    return {str(k): str(v) for k, v in mapping.items()}


# --- printing --------------------------------------------------------------------------
def _pct(value: float) -> str:
    return f"{value:.1%}"


def report_rows(campaign: campaign_pb2.Campaign) -> list[dict[str, object]]:
    out = []
    for row in campaign.funnel:
        out.append(
            {
                "variant": row.variant or "all",
                "targeted": row.targeted,
                "suppressed": sum(row.suppressed.values()),
                "scheduled": row.scheduled,
                "accepted": row.accepted,
                "sent": row.sent,
                "delivered": row.delivered,
                "failed": row.failed,
                "clicked": row.clicked,
                "converted": row.converted,
                "unsubscribed": row.unsubscribed,
                "reach_rate": round(row.reach_rate, 4),
                "click_rate": round(row.click_rate, 4),
                "conversion_rate": round(row.conversion_rate, 4),
                "push_effect": round(row.push_effect, 6),
            }
        )
    return out


def print_report(campaign: campaign_pb2.Campaign, out: IO[str]) -> None:
    print_status(campaign, out)
    rows = report_rows(campaign)
    header = ["variant", "targeted", "suppressed", "accepted", "sent", "delivered", "clicked", "converted",
              "reach", "click", "conv", "effect"]  # fmt: skip
    lines = [header]
    for row in rows:
        lines.append(
            [str(row["variant"])]
            + [
                f"{row[k]:,}"
                for k in ("targeted", "suppressed", "accepted", "sent", "delivered", "clicked", "converted")
            ]
            + [_pct(float(row[k])) for k in ("reach_rate", "click_rate", "conversion_rate")]  # type: ignore[arg-type]
            + [f"{float(row['push_effect']):.4f}"]  # type: ignore[arg-type]
        )
    for line in table(header, lines[1:], left=1):
        out.write(line + "\n")
    total = campaign.funnel[0] if campaign.funnel else None
    if total is not None and total.suppressed:
        reasons = ", ".join(f"{name} {count:,}" for name, count in sorted(total.suppressed.items()))
        out.write(f"suppressed by reason: {reasons}\n")
    if any(r.variant == "holdout" for r in campaign.funnel):
        out.write(
            f"holdout conversion rate {campaign.holdout_conversion_rate:.2%}; lift {campaign.lift:+.2%} "
            "(conversions a targeted user, treated minus holdout)\n"
        )


def print_status(campaign: campaign_pb2.Campaign, out: IO[str]) -> None:
    state = STATE_NAMES.get(campaign.state, "?")
    progress = campaign.progress
    out.write(
        f"{campaign.spec.campaign_id}  {state}  scenario {campaign.spec.scenario}  audience: {campaign.spec.audience}\n"
    )
    if campaign.paused_because:
        out.write(f"  paused by Herald: {campaign.paused_because}; fix it, then `herald campaign resume`\n")
    if progress.shards:
        skipped = f"  skipped {progress.skipped:,}" if progress.skipped else ""
        out.write(
            f"  scanned {progress.scanned:,}  in the audience {progress.matched:,}  "
            f"shards done {progress.shards_done}/{progress.shards}{skipped}\n"
        )
    if campaign.spec.HasField("test"):
        test = campaign.spec.test
        chosen = f"winner {campaign.winner}" if campaign.winner else f"phase {campaign.phase}"
        wait = format_duration(test.wait.ToTimedelta())
        out.write(f"  test: {test.sample:.0%} of the audience, best {test.metric} after {wait}; {chosen}\n")


class Bar:
    """The run's progress on stderr: a bar on a terminal, a line every 5 s otherwise."""

    def __init__(self, estimate: int, out: IO[str] = sys.stderr) -> None:
        self.estimate = max(estimate, 1)
        self.line = ProgressLine(out, first_at_once=True)

    def show(self, campaign: campaign_pb2.Campaign, final: bool = False) -> None:
        if not self.line.due(final):
            return
        p = campaign.progress
        share = 1.0 if final else min(p.matched / self.estimate, 0.99)
        rate = p.matched / self.line.elapsed()
        text = (
            f"{share:6.1%} {p.matched:,} of ~{self.estimate:,} users decided  {p.scanned:,} scanned  "
            f"shards {p.shards_done}/{p.shards}  {rate:,.0f} users/s"
        )
        self.line.show(share, text, final)


# --- the commands ------------------------------------------------------------------
def run(args: argparse.Namespace) -> int:
    try:
        with channel(args.target) as chan:
            stub = campaign_pb2_grpc.CampaignServiceStub(chan)
            return _run(args, stub, metadata(args.api_key))
    except grpc.RpcError as exc:
        print(f"herald: {explain_rpc_error(exc, args.target)}", file=sys.stderr)
        return 1
    except ClientError as exc:
        print(f"herald: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace, stub: Any, meta: Any) -> int:
    command = args.campaign_command
    if command == "create":
        created = stub.CreateCampaign(
            campaign_pb2.CreateCampaignRequest(campaign=spec_from_file(args.file)), metadata=meta, timeout=30
        )
        return _show(
            args,
            created,
            f"created {created.spec.campaign_id} (DRAFT); start it: herald campaign start {created.spec.campaign_id}",
        )
    if command == "list":
        found = stub.ListCampaigns(campaign_pb2.ListCampaignsRequest(limit=args.limit), metadata=meta, timeout=30)
        if args.json:
            print(json_format.MessageToJson(found))
            return 0
        for item in found.campaigns:
            state = STATE_NAMES.get(item.state, "?")
            print(f"{item.spec.campaign_id:<24} {state:<10} {item.spec.scenario:<20} {item.spec.audience}")
        return 0
    if command == "preview":
        found = stub.PreviewAudience(
            campaign_pb2.PreviewAudienceRequest(audience=args.audience, sample=args.sample), metadata=meta, timeout=60
        )
        if args.json:
            print(json_format.MessageToJson(found))
            return 0
        kind = "exactly" if found.exact else f"about (from {found.read:,} users read)"
        print(f"{found.canonical}\n  {kind} {found.estimate:,} user{'' if found.estimate == 1 else 's'}")
        for user in found.users:
            tags, channels = ",".join(user.tags) or "-", ",".join(user.channels) or "-"
            print(f"  {user.user_id:<24} {user.tier:<12} tags: {tags}  channels: {channels}")
        return 0
    action = campaign_pb2.CampaignAction(campaign_id=args.campaign_id)
    if command in ("pause", "resume", "cancel"):
        changed = getattr(stub, f"{command.capitalize()}Campaign")(action, metadata=meta, timeout=30)
        return _show(args, changed, f"{changed.spec.campaign_id} is {STATE_NAMES.get(changed.state, '?')}")
    get = campaign_pb2.GetCampaignRequest(campaign_id=args.campaign_id)
    if command == "status":
        return _show(args, stub.GetCampaign(get, metadata=meta, timeout=30), None)
    if command == "report":
        found = stub.GetCampaign(get, metadata=meta, timeout=30)
        if args.json:
            print(
                json.dumps(
                    {
                        "campaign": args.campaign_id,
                        "state": STATE_NAMES.get(found.state),
                        "funnel": report_rows(found),
                        "holdout_conversion_rate": found.holdout_conversion_rate,
                        "lift": found.lift,
                    },
                    ensure_ascii=False,
                    indent=2,
                )
            )
        elif args.csv:
            writer = csv.DictWriter(sys.stdout, fieldnames=list(REPORT_COLUMNS))
            writer.writeheader()
            writer.writerows(report_rows(found))
        else:
            print_report(found, sys.stdout)
        return 0
    if command == "start":
        started = stub.StartCampaign(action, metadata=meta, timeout=30)
        if args.no_wait:
            return _show(args, started, f"{started.spec.campaign_id} is RUNNING")
    return _watch(args, stub, meta, get)


def _watch(args: argparse.Namespace, stub: Any, meta: Any, get: campaign_pb2.GetCampaignRequest) -> int:
    current = stub.GetCampaign(get, metadata=meta, timeout=30)
    estimate = stub.PreviewAudience(
        campaign_pb2.PreviewAudienceRequest(audience=current.spec.audience, sample=1), metadata=meta, timeout=60
    ).estimate
    bar = Bar(estimate)
    ends = {
        campaign_pb2.CAMPAIGN_STATE_COMPLETED,
        campaign_pb2.CAMPAIGN_STATE_CANCELLED,
        campaign_pb2.CAMPAIGN_STATE_PAUSED,
    }
    while current.state not in ends:
        bar.show(current)
        time.sleep(0.5)
        current = stub.GetCampaign(get, metadata=meta, timeout=30)
    bar.show(current, final=True)
    return _show(args, current, None)


def _show(args: argparse.Namespace, campaign: campaign_pb2.Campaign, line: str | None) -> int:
    if args.json:
        print(json_format.MessageToJson(campaign))
    else:
        if line:
            print(line)
        print_status(campaign, sys.stdout)
    return 0
