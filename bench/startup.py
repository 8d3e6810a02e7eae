"""Benchmark: how fast a new user's first command is, and how big the package is.

    python bench/startup.py            # the shipped models; 5 timed runs after one warm-up each

Times whole processes (wall clock, median of --runs after a warm-up, min and max beside it):
``import textdiffusion``, ``import torch``, import + ``Pipeline.from_pretrained`` of each shipped
model (the import and model-load share of start-up), and ``textdiffusion generate`` of 128 tokens
with each model's own card settings, start-up included. Then builds the wheel and reports its
size and its unpacked (installed) size, the shipped models' share apart. Writes
``bench/out/startup.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import EXE, REPO, cpu_model  # noqa: E402


def timed(cmd: list[str], runs: int) -> dict:
    """Median / min / max wall seconds of ``cmd`` as a whole process, after one warm-up run."""
    walls = []
    for i in range(runs + 1):
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if proc.returncode:
            raise SystemExit(f"command failed: {' '.join(cmd)}\n{proc.stderr}")
        if i:
            walls.append(wall)
    return {"median": statistics.median(walls), "min": min(walls), "max": max(walls), "output": proc.stdout,
            "stderr_tail": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ""}


def wheel_sizes() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", tmp,
                        str(REPO)], check=True)
        wheel = next(Path(tmp).glob("textdiffusion-*.whl"))
        with zipfile.ZipFile(wheel) as z:
            infos = z.infolist()
        models = sum(i.file_size for i in infos if "/pretrained/" in i.filename and not i.filename.endswith(".py"))
        return {"wheel_bytes": wheel.stat().st_size, "installed_bytes": sum(i.file_size for i in infos),
                "shipped_models_bytes": models}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--length", type=int, default=128)
    p.add_argument("--out", default=str(REPO / "bench" / "out"))
    args = p.parse_args()
    py = sys.executable
    rows = {
        "import textdiffusion": [py, "-c", "import textdiffusion"],
        "import torch": [py, "-c", "import torch"],
    }
    for name in ("english", "code"):
        rows[f"import + load {name}"] = [py, "-c", f"from textdiffusion import Pipeline; Pipeline.from_pretrained('{name}')"]
    prompts = {"english": "The meaning of life", "code": "def "}
    for name, prompt in prompts.items():
        rows[f"generate {args.length} tokens ({name})"] = [str(EXE), "generate", prompt, "--model", name,
                                                          "--length", str(args.length)]
    results = {}
    for label, cmd in rows.items():
        results[label] = timed(cmd, args.runs)
        r = results[label]
        print(f"{label:34s} median {r['median']:.2f} s  (min {r['min']:.2f}, max {r['max']:.2f})  {r['stderr_tail']}",
              flush=True)
    sizes = wheel_sizes()
    print(f"wheel {sizes['wheel_bytes'] / 1e6:.1f} MB; installed {sizes['installed_bytes'] / 1e6:.1f} MB, of which "
          f"shipped models {sizes['shipped_models_bytes'] / 1e6:.1f} MB")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = {"date": datetime.date.today().isoformat(), "machine": cpu_model(), "cores": os.cpu_count(),
              "python": platform.python_version(), "runs": args.runs, "results": results, **sizes}
    (out / "startup.json").write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
