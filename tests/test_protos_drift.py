"""The committed generated code is exactly what scripts/gen-protos produces."""

from __future__ import annotations

import filecmp
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT


def test_generated_code_matches_the_protos(tmp_path: Path) -> None:
    env_bin = Path(sys.executable).parent
    subprocess.run(
        ["bash", str(ROOT / "scripts" / "gen-protos"), str(tmp_path)],
        check=True,
        cwd=ROOT,
        env={"PATH": f"{env_bin}:/usr/bin:/bin"},
        capture_output=True,
    )
    fresh = tmp_path / "herald" / "v1"
    committed = ROOT / "herald" / "v1"
    names = sorted(p.name for p in fresh.iterdir() if p.is_file())
    assert names == sorted(p.name for p in committed.iterdir() if p.is_file() and p.suffix in (".py", ".pyi"))
    _, mismatch, errors = filecmp.cmpfiles(fresh, committed, names, shallow=False)
    assert not mismatch and not errors, (
        f"generated code is stale for {mismatch + errors}: run scripts/gen-protos and commit the result"
    )
