"""bench/scarce_data.py (issue 39): the scarce-data grid runs end to end in its --quick form, its
data are the corpus's standard split, and a --resume of a finished grid trains nothing again."""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "bench" / "scarce_data.py"


def _corpus(path: Path) -> Path:
    """About 70 KB of seeded pseudo-verse, one line at a time (the script cuts at newlines)."""
    rng = random.Random(0)
    words = ("the king of love and death shall speak to thee my lord what is this night a fair sweet heart o "
             "good sir").split()
    lines = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 9))).capitalize() + rng.choice(".,!?")
             for _ in range(2500)]
    path.write_text("\n".join(lines) + "\n")
    return path


def _bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=900)


def test_quick_grid_runs_and_resume_trains_nothing_again(tmp_path):
    """--quick trains both twins of one size and setting, scores their best checkpoints and writes
    the tables and plots; a second start without --resume is refused in one line; --resume on the
    finished grid launches nothing (counts: each run's trainings and evaluations stay at 1, its
    checkpoint and metrics unchanged); and a run stopped after its training but before its score
    was recorded is scored on --resume without training again. Planted bugs, each seen failing:
    ``do_run`` without its skip of runs whose evaluation is recorded (``if rec["status"] ==
    "done"``): the resume scored both finished runs again (evaluations 1 -> 2); and
    ``finished_training`` comparing the step with ``>`` for ``>=``: the unscored run was given
    ``textdiffusion train --resume`` again (trainings 1 -> 2)."""
    from textdiffusion.data.sources import Document, split_documents

    corpus = _corpus(tmp_path / "corpus.txt")
    out = tmp_path / "grid"
    first = _bench("--quick", "--corpus", str(corpus), "--out", str(out))
    assert first.returncode == 0, first.stderr[-3000:]

    # data: the standard split's validation text, and a prefix of its training text before it
    text = corpus.read_text()
    split = split_documents([Document("c", text)], 0.05, stdlib=False)
    assert (out / "data" / "val.txt").read_text() == split["val"][0]
    body = (out / "data" / "train-2k.txt").read_text()
    assert body.endswith(split["val"][0]) and split["train"][0].startswith(body[: -len(split["val"][0])])

    state = json.loads((out / "results.json").read_text())
    runs = state["runs"]
    assert sorted(runs) == ["2k-ar-base", "2k-diffusion-base"]
    for name, rec in runs.items():
        assert (rec["status"], rec["trainings"], rec["evaluations"]) == ("done", 1, 1), name
        e = rec["eval"]
        assert e["exact"] == (rec["twin"] == "ar")  # the AR twin's NLL, the diffusion model's bound
        assert math.isfinite(e["bits_per_byte"]) and e["bits_per_byte"] > 0
        val_bytes = len(split["val"][0].encode())  # every whole window of the validation text, bytes counted
        assert val_bytes - 40 * 4 < e["num_bytes"] < val_bytes  # (the tail short of a window of 32 tokens left out)
        assert rec["steps"] == rec["max_steps"] and rec["epochs"] <= rec["epochs_trained"] < rec["epochs"] + 0.1
        assert 0 < rec["best_step"] <= rec["steps"]
        assert rec["train_flops"] == rec["flops_per_token"] * rec["tokens_seen"] > 0
    table = (out / "results.md").read_text().splitlines()
    for twin in ("ar", "diffusion"):  # one row a twin in the table of runs
        assert sum(f"| {twin} | none (weight decay 0.1) |" in line for line in table) == 1
    assert state["machine"] in table[0]
    assert (out / "curves.png").stat().st_size > 0 and (out / "gap.png").stat().st_size > 0

    again = _bench("--quick", "--corpus", str(corpus), "--out", str(out))
    assert again.returncode != 0
    assert "--resume" in again.stderr.strip().splitlines()[-1]

    before = {name: ((out / "runs" / name / "checkpoint" / "state.json").read_text(),
                     (out / "runs" / name / "metrics.jsonl").read_text()) for name in runs}
    resumed = _bench("--quick", "--corpus", str(corpus), "--out", str(out), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    after = json.loads((out / "results.json").read_text())
    assert {name: (rec["trainings"], rec["evaluations"]) for name, rec in after["runs"].items()} == {
        name: (1, 1) for name in runs}
    assert {name: after["runs"][name]["eval"] for name in runs} == {name: runs[name]["eval"] for name in runs}
    for name in runs:
        assert ((out / "runs" / name / "checkpoint" / "state.json").read_text(),
                (out / "runs" / name / "metrics.jsonl").read_text()) == before[name]
    assert "textdiffusion train" not in resumed.stderr

    # stopped while scoring: results.json says "training" (its last save) and holds no score
    rec = after["runs"]["2k-diffusion-base"]
    rec["status"] = "training"
    del rec["eval"]
    (out / "results.json").write_text(json.dumps(after))
    rescored = _bench("--quick", "--corpus", str(corpus), "--out", str(out), "--resume")
    assert rescored.returncode == 0, rescored.stderr[-3000:]
    final = json.loads((out / "results.json").read_text())["runs"]
    assert {name: (rec["trainings"], rec["evaluations"]) for name, rec in final.items()} == {
        "2k-ar-base": (1, 1), "2k-diffusion-base": (1, 2)}
    assert final["2k-diffusion-base"]["eval"] == runs["2k-diffusion-base"]["eval"]  # the same weights, seed, score
    assert "textdiffusion train" not in rescored.stderr


def test_the_gpu_preset_is_its_own_grid(tmp_path):
    """--gpu plans the grid for one GPU (sizes from 100k tokens up, a wider model), and --gpu with
    --quick is one line naming both, exit 2; ``bench/gpu.py --scarce`` is the same grid.
    Catches the preset read but not applied (planted: preset = QUICK if args.quick else FULL; the
    CPU grid's sizes were planned, and its 60k was the size refused), and gpu.py handing on
    without --gpu (planted: the same 60k refusal)."""
    both = _bench("--gpu", "--quick", "--out", str(tmp_path / "x"))
    assert both.returncode == 2 and "--quick and --gpu" in both.stderr and "Traceback" not in both.stderr
    assert not (tmp_path / "x").exists()
    corpus = _corpus(tmp_path / "verse.txt")
    # the pseudo-verse holds about 21k tokens: the preset's first size (100k) is refused by name (the CPU
    # grid's 20k would fit, and its 60k would be the one named)
    plan = _bench("--gpu", "--plan", "--corpus", str(corpus), "--out", str(tmp_path / "gpu"))
    assert plan.returncode != 0 and "Traceback" not in plan.stderr
    assert "--sizes 100:" in plan.stderr.strip().splitlines()[-1], plan.stderr[-2000:]
    via = subprocess.run([sys.executable, str(REPO / "bench" / "gpu.py"), "--scarce", "--plan", "--corpus",
                          str(corpus), "--out", str(tmp_path / "gpu2")], capture_output=True, text=True, timeout=900)
    assert via.returncode == plan.returncode and "Traceback" not in via.stderr
    assert via.stderr.strip().splitlines()[-1] == plan.stderr.strip().splitlines()[-1]
