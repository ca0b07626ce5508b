"""Progress on stderr for steps that can take a while: one line per finished step with its time, and bars for
loops of known length. Off unless a front end turns it on (the CLI does for terminals, unless --quiet)."""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from typing import IO, Iterator, Sequence, TypeVar

from tqdm import tqdm

_stream: IO[str] | None = None
T = TypeVar("T")
log = logging.getLogger("graphprune")


@contextlib.contextmanager
def reporting(enabled: bool, stream: IO[str] | None = None) -> Iterator[None]:
    """Report progress to `stream` (default stderr) while inside, if `enabled`."""
    global _stream
    previous, _stream = _stream, (stream or sys.stderr) if enabled else None
    try:
        yield
    finally:
        _stream = previous


@contextlib.contextmanager
def step(label: str) -> Iterator[None]:
    """Announce `label`, then overwrite it with the time it took (kept only when the step succeeds); the
    time is also logged (INFO), whether progress is shown or not."""
    start = time.perf_counter()
    if _stream is not None:
        _stream.write(f"{label} …\r")
        _stream.flush()
    try:
        yield
    except BaseException:
        if _stream is not None:
            _stream.write("\r\033[K")
        raise
    elapsed = time.perf_counter() - start
    log.info("%s: %.2f s", label, elapsed)
    if _stream is not None:
        _stream.write(f"\r\033[K{label} ({elapsed:.1f} s)\n")
        _stream.flush()


def bar(total: int, label: str, unit: str) -> tqdm:
    """A progress bar over `total` units (a disabled one when progress is off); it clears its line when
    closed, so an error message never follows bar residue. Use it as a context manager."""
    return tqdm(total=total, desc=label, unit=unit, leave=False, disable=_stream is None, file=_stream,
                dynamic_ncols=True)


def iterate(items: Sequence[T], label: str, unit: str) -> Iterator[T]:
    """Yield `items` while a bar counts them."""
    with bar(len(items), label, unit) as counter:
        for item in items:
            yield item
            counter.update()
