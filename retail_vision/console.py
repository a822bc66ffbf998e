"""Progress lines for people: on stderr, prefixed, flushed at once (stdout is kept for results)."""

from __future__ import annotations

import sys


def log(message: str) -> None:
    print(f"[retail-vision] {message}", file=sys.stderr, flush=True)
