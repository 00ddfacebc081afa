"""Progress of long work: a tqdm bar on a terminal, plain lines when the output is a file or a pipe (CI, logs).

    with Progress(total=len(batches), desc="calibrating") as bar:
        for batch in batches:
            ...
            bar.update()

A bar redraws itself in place, which in a log file is a wall of carriage returns; so off a terminal the
same calls print one line when a quarter of the work is done (or `every_s` seconds passed) and at the end.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO, TypeVar

T = TypeVar("T")


class Progress:
    def __init__(self, total: int | None, desc: str, *, initial: int = 0, unit: str = "it", enabled: bool = True,
                 stream: TextIO | None = None, terminal: bool | None = None, every_s: float = 30.0,
                 leave: bool = False) -> None:
        self.total, self.desc, self.n, self.unit = total, desc, initial, unit
        self.stream = stream or sys.stderr
        self.every_s = every_s
        self.postfix = ""
        self.t0 = self.t_line = time.monotonic()
        self.next_quarter = (4 * initial // total + 1) if total else 1
        self.closed = not enabled
        self.bar = None
        if enabled and (self._isatty() if terminal is None else terminal):
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, leave=leave, dynamic_ncols=True,
                            file=self.stream)

    def _isatty(self) -> bool:
        isatty = getattr(self.stream, "isatty", None)
        return bool(isatty and isatty())

    def update(self, n: int = 1) -> None:
        if self.closed:
            return
        self.n += n
        if self.bar is not None:
            self.bar.update(n)
            return
        now = time.monotonic()
        quarter = self.total and 4 * self.n >= self.next_quarter * self.total
        if quarter or now - self.t_line >= self.every_s:
            if self.total:
                self.next_quarter = 4 * self.n // self.total + 1
            if not (self.total and self.n >= self.total):  # the end is close()'s line
                self._line(now)

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(f"{k} {v}" for k, v in values.items())
        if self.bar is not None:
            self.bar.set_postfix(values)

    def _line(self, now: float, done: bool = False) -> None:
        count = f"{self.n}/{self.total} {self.unit}" if self.total else f"{self.n} {self.unit}"
        pct = f" ({100 * self.n / self.total:.0f} %)" if self.total else ""
        tail = f", {self.postfix}" if self.postfix else ""
        state = "done" if done else "at"
        print(f"{self.desc}: {state} {count}{pct} after {now - self.t0:.0f} s{tail}", file=self.stream, flush=True)
        self.t_line = now

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.bar is not None:
            self.bar.close()
        elif self.n:
            self._line(time.monotonic(), done=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def track(items: Iterable[T], desc: str, total: int | None = None, **kwargs: Any) -> Iterator[T]:
    """Iterate `items`, showing progress; total defaults to len(items) where it has one."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with Progress(total, desc, **kwargs) as bar:
        for item in items:
            yield item
            bar.update()
