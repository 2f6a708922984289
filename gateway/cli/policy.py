"""``herald policy check DIR``: for product teams' CI; ``herald policy schema``: for their editors."""

from __future__ import annotations

import sys
from pathlib import Path

from gateway.errors import PolicyError
from gateway.policy.loader import load_policy


def check(directory: Path) -> int:
    try:
        policy = load_policy(directory)
    except PolicyError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(f"herald: {len(exc.problems)} problem(s); the gateway would refuse this set", file=sys.stderr)
        return 1
    print(
        f"ok: policy {policy.version}: {len(policy.files)} files, {len(policy.business_units)} business units, "
        f"{len(policy.scenarios)} scenarios, {len(policy.audiences)} audiences"
    )
    return 0


def schema(out: Path | None) -> int:
    from gateway.policy.schema import json_schema_text

    text = json_schema_text()
    if out is None:
        sys.stdout.write(text)
        return 0
    try:
        out.write_text(text, encoding="utf-8")
    except OSError as exc:
        print(f"herald: cannot write {out}: {exc.strerror}", file=sys.stderr)
        return 2
    print(f"wrote {out}", file=sys.stderr)
    return 0


def run_simulation(policy_dirs: list[Path], traffic: Path) -> int:
    import asyncio

    from gateway.logs import configure
    from gateway.simulate import TrafficError, format_reports, read_traffic, simulate

    if len(policy_dirs) > 2:
        print("herald: give --policies once, or twice to compare", file=sys.stderr)
        return 2
    for directory in policy_dirs:
        if not directory.is_dir():
            print(
                f"herald: no policy folder '{directory}'; to try a change, copy the serving set and edit the copy "
                f"first: cp -r {policy_dirs[0] if directory != policy_dirs[0] else 'policies'} {directory}",
                file=sys.stderr,
            )
            return 2
    configure("ERROR")
    try:
        events = read_traffic(traffic)
        reports = [asyncio.run(simulate(directory, events)) for directory in policy_dirs]
    except TrafficError as exc:
        print(f"herald: {exc}", file=sys.stderr)
        return 2
    except PolicyError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 1
    print(format_reports(reports, [str(d) for d in policy_dirs]))
    return 0
