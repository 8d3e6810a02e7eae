"""The command line as a test runs it: ``cli`` (the installed command in a subprocess) and
``in_process`` (``main`` inside this process: no interpreter start-up, no torch import)."""

import os
import subprocess
import sys
from pathlib import Path

EXE = Path(sys.executable).parent / "textdiffusion"


def cli(*args, cwd=None, env_cache=None):
    env = {**os.environ, "TEXTDIFFUSION_CACHE": str(env_cache)} if env_cache else None
    cmd = [str(EXE)] if EXE.exists() else [sys.executable, "-m", "textdiffusion"]
    return subprocess.run([*cmd, *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def in_process(*args, stdin: bytes = b"", env_cache=None):
    """The command line run inside this process (errors and short commands: no interpreter
    start-up, no torch import; what ``main`` prints and returns is what the installed command
    prints and exits with): ``cli``'s CompletedProcess, with bytes for standard input. The
    process's torch threads and environment are restored afterwards."""
    import contextlib
    import io

    import torch

    from textdiffusion.cli import main

    out, err = io.StringIO(), io.StringIO()
    saved = sys.stdin, torch.get_num_threads(), os.environ.get("TEXTDIFFUSION_CACHE")
    sys.stdin = io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8")
    if env_cache:
        os.environ["TEXTDIFFUSION_CACHE"] = str(env_cache)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main([str(a) for a in args])
            except SystemExit as exc:  # argparse's usage errors
                code = exc.code
    finally:
        sys.stdin = saved[0]
        torch.set_num_threads(saved[1])
        if saved[2] is None:
            os.environ.pop("TEXTDIFFUSION_CACHE", None)
        else:
            os.environ["TEXTDIFFUSION_CACHE"] = saved[2]
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())
