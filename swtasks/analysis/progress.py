"""Progress bars for the analysis tools: tqdm when it is installed, plain lines otherwise.

tqdm is not a core dependency (it arrives with Lightning, the `cls` extra), and a progress bar is not a
reason to refuse to run: without tqdm the same calls print one line per step (at most one every two seconds)
to stderr. Bars go to stderr, so a table printed on stdout can be redirected cleanly.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

__all__ = ["Progress", "progress"]


class _Lines:
    """The fallback: `desc: n/total` lines on stderr, throttled."""

    def __init__(self, total: int | None, desc: str, disable: bool):
        self.total, self.desc, self.disable = total, desc, disable
        self.n, self._last = 0, 0.0

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if not self.disable and (now - self._last >= 2.0 or self.n == self.total):
            self._last = now
            of = f"/{self.total}" if self.total else ""
            print(f"{self.desc}: {self.n}{of}", file=sys.stderr, flush=True)

    def set_description(self, desc: str) -> None:
        self.desc = desc

    def write(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        pass


class Progress:
    """A progress bar with `update(n)`, `set_description(text)`, `write(text)` (a message that does not break
    the bar) and `close()`; a context manager. `disable=True` shows nothing (messages are still written)."""

    def __init__(self, total: int | None = None, desc: str = "", disable: bool = False, unit: str = "it"):
        try:
            from tqdm.auto import tqdm
        except ImportError:  # tqdm comes with the `cls` extra; plain lines without it
            self._bar: Any = _Lines(total, desc, disable)
            self._tqdm = None
        else:
            self._bar = tqdm(total=total, desc=desc, disable=True if disable else None, unit=unit, file=sys.stderr, leave=False,
                             dynamic_ncols=True)
            self._tqdm = tqdm

    def update(self, n: int = 1) -> None:
        self._bar.update(n)

    def set_description(self, desc: str) -> None:
        self._bar.set_description(desc)

    def write(self, text: str) -> None:
        if self._tqdm is not None:
            self._tqdm.write(text, file=sys.stderr)
        else:
            self._bar.write(text)

    def close(self) -> None:
        self._bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress(iterable: Iterable, total: int | None = None, desc: str = "", disable: bool = False) -> Iterator:
    """Iterate over `iterable` with a progress bar (see Progress)."""
    if total is None:
        try:
            total = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            total = None
    with Progress(total, desc, disable) as bar:
        for item in iterable:
            yield item
            bar.update()
