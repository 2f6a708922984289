"""The one progress line long CLI runs show on stderr: a bar redrawn in place on a
terminal (at most every 0.2 s), a plain line every 5 s otherwise (CI logs)."""

from __future__ import annotations

import sys
import time
from typing import IO


class ProgressLine:
    def __init__(self, out: IO[str] = sys.stderr, *, first_at_once: bool = False) -> None:
        self.out = out
        self.tty = out.isatty()
        self.started = time.monotonic()
        self._last = 0.0 if first_at_once else self.started

    def elapsed(self) -> float:
        return max(time.monotonic() - self.started, 1e-6)

    def due(self, final: bool = False) -> bool:
        """Whether a line is due now (``show`` then draws it)."""
        return final or time.monotonic() - self._last >= (0.2 if self.tty else 5.0)

    def show(self, share: float, text: str, final: bool = False) -> None:
        if not self.due(final):
            return
        self._last = time.monotonic()
        if self.tty:
            self.out.write(f"\r[{'#' * int(share * 30):<30}] {text}")
            if final:
                self.out.write("\n")
        else:
            self.out.write(text + "\n")
        self.out.flush()
