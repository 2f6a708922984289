"""``herald keys new BU``: a new API key for a business unit the policy defines, and
the credentials entry that makes it valid."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path

from gateway.errors import PolicyError


def new(bu: str, policy_dir: Path, label: str | None = None) -> int:
    from gateway.api.auth import hash_key, new_key
    from gateway.policy.loader import load_policy

    try:
        known = sorted(load_policy(policy_dir).business_units)
    except PolicyError as exc:
        for problem in exc.problems[:5]:
            print(problem, file=sys.stderr)
        print(
            f"herald: cannot check '{bu}' against the policy in {policy_dir} ({len(exc.problems)} problem(s); "
            f"`herald policy check {policy_dir}` lists them all); name the policy folder with --policy-dir or "
            "HERALD_POLICY_DIR",
            file=sys.stderr,
        )
        return 2
    if bu not in known:
        print(
            f"herald: the policy in {policy_dir} has no business unit '{bu}'; known: {', '.join(known)}. "
            "Add it to business_units first (docs/policy.md), or name another policy folder with --policy-dir",
            file=sys.stderr,
        )
        return 2
    key = new_key(bu)
    label = label or f"created by herald keys new on {datetime.now(UTC):%Y-%m-%d}"
    # The whole output is a valid credentials file: paste the entry under an existing
    # `keys:`, or start a file with all of it.
    print(f"# API key for '{bu}' (give it to the unit; Herald keeps only its hash):\n#   {key}")
    print("# Add the entry to the credentials file (HERALD_CREDENTIALS) under `keys:`, then")
    print("# reload the gateway (SIGHUP). A new file starts with the `keys:` line.")
    print(f"keys:\n  - bu: {bu}\n    sha256: {hash_key(key)}\n    label: {_yaml_text(label)}")
    return 0


def _yaml_text(text: str) -> str:
    """A label as a YAML scalar: double-quoted (JSON's escaping is YAML's)."""
    return json.dumps(text, ensure_ascii=False)
