"""Ctrl-C in the command line: never a traceback, never a crash inside native code.

Python raises KeyboardInterrupt wherever the main thread happens to be. Inside an import (torch's
takes about a second) that was a long traceback, and inside torch's C++ start-up (which calls
back into Python) an abort: "terminate called after throwing an instance of ...
KeyboardInterrupt". ``install()`` raises it only outside every import; inside one it is deferred
and retried every 50 ms (SIGALRM) until the import is over, and the command line turns it into
"interrupted" (exit 130). ``shutting_down()`` ignores Ctrl-C once the command has finished: a
second Ctrl-C during the interpreter's exit would print an atexit traceback.
"""

from __future__ import annotations

import builtins
import signal
import sys
import threading

_CHECK_EVERY = 0.05  # seconds between tries to raise a deferred Ctrl-C
_state = {"pending": False, "depth": 0}
_import = builtins.__import__
_MAIN = threading.main_thread().ident


def _in_import(frame) -> bool:
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


def _raise() -> None:
    _state["pending"] = False
    signal.setitimer(signal.ITIMER_REAL, 0)
    raise KeyboardInterrupt


def _on_signal(signum, frame):
    if signum == signal.SIGALRM and not _state["pending"]:
        return
    if not _in_import(frame):
        _raise()
    _state["pending"] = True  # raised when the outermost import statement returns, or at the next tick outside
    signal.setitimer(signal.ITIMER_REAL, _CHECK_EVERY)


def _deferring_import(*args, **kwargs):
    if threading.get_ident() != _MAIN:  # only the main thread gets Ctrl-C; other threads import as usual
        return _import(*args, **kwargs)
    _state["depth"] += 1
    try:
        return _import(*args, **kwargs)
    finally:
        _state["depth"] -= 1
        if _state["depth"] == 0 and _state["pending"] and not _in_import(sys._getframe(1)):
            _raise()  # in the code that ran the import statement: plain Python


def install() -> None:
    if hasattr(signal, "setitimer"):  # POSIX; elsewhere Python's own handler stays
        signal.signal(signal.SIGALRM, _on_signal)
        signal.signal(signal.SIGINT, _on_signal)
        builtins.__import__ = _deferring_import


def shutting_down() -> bool:
    """Ignore Ctrl-C from now on; True if one was still deferred (the command was interrupted)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    builtins.__import__ = _import
    if hasattr(signal, "setitimer"):
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, signal.SIG_IGN)
    return _state["pending"]
