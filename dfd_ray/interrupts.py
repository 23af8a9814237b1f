"""Ctrl-C and SIGTERM on the command line: the first stops the job cleanly, a second at once.

The first SIGINT or SIGTERM raises KeyboardInterrupt in the main thread, so `finally` blocks run
(Ray shuts down, the writers' temporaries are removed) and `cli.main` prints how to resume; a
second signal during that clean-up exits the process at once (status 128 + signal).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

_installed = False
received: str = ""  # name of the first signal taken, "" before any


def _now(signum: int, frame: object) -> None:
    os._exit(128 + signum)


def _first(signum: int, frame: object) -> None:
    global received
    received = signal.Signals(signum).name
    signal.signal(signal.SIGINT, _now)
    signal.signal(signal.SIGTERM, _now)
    # Two signals that arrive before this handler runs count as one (they do not queue), so the
    # user learns here that the first was taken and that another one now stops at once.
    print(f"\ndfd-ray: {received}: stopping (send it again to stop at once)", file=sys.stderr, flush=True)
    raise KeyboardInterrupt(received)


def install() -> None:
    """Take over SIGINT and SIGTERM (main thread only; the command line calls this)."""
    global _installed
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _first)
        signal.signal(signal.SIGTERM, _first)
        _installed = True


def reinstall() -> None:
    """After `ray.init`, which sets a SIGTERM handler of its own in the driver (a bare sys.exit)."""
    if _installed and threading.current_thread() is threading.main_thread() \
            and signal.getsignal(signal.SIGINT) is _first:
        signal.signal(signal.SIGTERM, _first)


def call_beside(fn: Callable[[], T]) -> T:
    """`fn()` in a daemon thread while the main thread waits, so that a signal stops the wait at once.

    For calls that take SIGINT over while they run: Ray Train's `fit` installs a handler of its own
    in the main thread that aborts the run and then fails with an actor error; run beside the main
    thread it installs none, and the caller's `finally` (ray.shutdown) stops the run instead.
    """
    box: dict = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed to the waiting thread
            box["error"] = exc

    thread = threading.Thread(target=target, name="dfd-ray-beside", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]
