"""``herald policy check DIR``: for product teams' CI."""

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
        f"{len(policy.scenarios)} scenarios"
    )
    return 0
