"""Progress lines for people: on stderr, prefixed, flushed at once (stdout is kept for results)."""

from __future__ import annotations

import sys
import time

PROGRESS_EVERY_S = 10.0  # long work says how far it is at most this often


def log(message: str) -> None:
    print(f"[retail-vision] {message}", file=sys.stderr, flush=True)


class Progress:
    """Says '<verb> 1,234 of 5,678 <noun> (40/s, about 111 s left)' at most every PROGRESS_EVERY_S seconds.

    Nothing is said once the work is done: the caller's own line closes it.
    """

    def __init__(self, total: int, verb: str, noun: str):
        self.total, self.verb, self.noun = total, verb, noun
        self.done = 0
        self.started = self.last_said = time.monotonic()

    def advance(self, count: int = 1) -> None:
        self.done += count
        now = time.monotonic()
        if now - self.last_said >= PROGRESS_EVERY_S and self.done < self.total:
            rate = self.done / max(now - self.started, 1e-9)
            log(f"{self.verb} {self.done:,} of {self.total:,} {self.noun} ({rate:.0f}/s, about "
                f"{(self.total - self.done) / rate:.0f} s left)")
            self.last_said = now
