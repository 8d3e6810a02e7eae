"""The pictures of docs/how-it-works.md and the README, made by the commands they illustrate.

    python bench/docs_images.py --ar AR_RUN        # writes docs/images/*.png, *.gif

* forward.png: ``textdiffusion viz english --forward "To be, or not to be, that is the question"``
* denoise.gif, strip.png, decided.png: ``textdiffusion viz english "ROMEO:" --steps 32 --length 64
  --seed 0 --sampler confidence --temperature 0.8 --ar AR_RUN`` (decided.png puts the AR run's
  fraction decided beside the diffusion model's, against network calls)
* demo.png: the demo page of ``textdiffusion serve english`` in headless Chromium after one
  continuation of "ROMEO:" (tests/browser.py starts the browser)

AR_RUN is an autoregressive run with the English model's tokenizer and size (the speed and the
one-token-per-call shape of its curve do not depend on how long it was trained; its text does).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "docs" / "images"


def viz(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "textdiffusion", "viz", *args], check=True)


def demo_screenshot(path: Path) -> None:
    sys.path.insert(0, str(REPO / "tests"))
    from browser import chromium

    proc = subprocess.Popen([sys.executable, "-m", "textdiffusion", "serve", "english", "--port", "0",
                             "--log-level", "warning"], stderr=subprocess.PIPE, text=True)
    try:
        url = None
        while url is None:
            line = proc.stderr.readline()
            if not line:
                raise SystemExit("the server did not start")
            if "serving" in line:
                url = line.split(" on ")[-1].strip()
        with chromium(1100, 760) as d:
            d.get(url + "/")
            box = d.find_element("id", "text")
            box.clear()
            box.send_keys("ROMEO:")
            d.find_element("id", "go").click()
            deadline = time.monotonic() + 60
            while d.execute_script("return window.demo.final") is None:
                if time.monotonic() > deadline:
                    raise SystemExit("no answer from the demo page")
                time.sleep(0.1)
            d.save_screenshot(str(path))
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ar", required=True, help="an AR run with the English model's tokenizer")
    a = p.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    viz("english", "--forward", "To be, or not to be, that is the question", "--out", str(OUT))
    with tempfile.TemporaryDirectory() as tmp:
        viz("english", "ROMEO:", "--steps", "32", "--length", "64", "--seed", "0", "--sampler", "confidence",
            "--temperature", "0.8", "--ar", a.ar, "--out", tmp, "--formats", "gif,strip,plot")
        for name in ("denoise.gif", "strip.png", "decided.png"):
            shutil.copy(Path(tmp) / name, OUT / name)
    demo_screenshot(OUT / "demo.png")
    for f in sorted(OUT.iterdir()):
        print(f"{f.relative_to(REPO)}: {f.stat().st_size // 1024} KiB")


if __name__ == "__main__":
    main()
