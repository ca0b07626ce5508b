"""The `graphprune` command's entry point. Ctrl-C and SIGTERM become one line and exit 128 + the signal (130,
143) at any moment — while importing, working or writing — after the cleanup the interruption unwinds through
(staging folders, unpublished files) has run; a second signal during that cleanup is ignored."""

from __future__ import annotations

import signal
import sys

_SAID = {signal.SIGINT: "interrupted", signal.SIGTERM: "terminated"}


class Stopped(KeyboardInterrupt):
    """A signal asked the run to stop (a KeyboardInterrupt, so no `except Exception` swallows it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(_SAID[signum])
        self.signum = signum


def _stop(signum: int, frame) -> None:
    for each in _SAID:
        signal.signal(each, signal.SIG_IGN)
    raise Stopped(signum)


def main(argv: list[str] | None = None) -> int:
    """Run the command line with interruption handled (see the module's docstring)."""
    for each in _SAID:
        signal.signal(each, _stop)
    try:
        from graphprune.cli.main import main as run

        return run(argv)
    except KeyboardInterrupt as stop:
        signum = getattr(stop, "signum", signal.SIGINT)
        print(f"graphprune: {_SAID[signum]}", file=sys.stderr)
        return 128 + signum
    finally:
        for each in _SAID:  # the run is over: a signal now must not turn its exit into a traceback
            signal.signal(each, signal.SIG_IGN)


if __name__ == "__main__":
    sys.exit(main())
