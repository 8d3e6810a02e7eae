"""lm-evaluation-harness (harness.py, `textdiffusion lm-eval`): the conditional log-likelihood a
task's choices are ranked by (exact for AR, the ELBO with its Monte Carlo error for diffusion),
and a real lm_eval run on a local task, offline, in which a trained tiny diffusion model and its
AR twin both score far above chance."""

import glob
import json
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from textdiffusion.evaluation.likelihood import continuation_logprob
from textdiffusion.runs import load_run

CYCLE = "abcdefgh"


@pytest.fixture(scope="module")
def ar_cycle_dir(tmp_path_factory):
    """The AR twin of conftest's cycle_dir: the same data, backbone and budget."""
    from conftest import train_cycle

    return train_cycle(tmp_path_factory.mktemp("ar_cycle"), "ar")


def _ids(text):
    return [CYCLE.index(c) for c in text]


def test_ar_loglikelihood_is_the_exact_conditional(ar_cycle_dir):
    """AR: log p(cont | head) is the sum of the teacher-forced log-softmax at the continuation's
    positions (after end-of-text and the head), with no Monte Carlo error. Would catch: the
    head's tokens scored too, or the scores read one position off."""
    run = load_run(ar_cycle_dir)
    head, cont = _ids("cdefg"), _ids("hab")
    ll, se, greedy = continuation_logprob(run, head, cont)
    window = torch.tensor([run.tokenizer.eot_id, *head, *cont])
    with torch.no_grad():
        logp = torch.log_softmax(run.model(window[None, :-1])[0].double(), -1)
    want = sum(float(logp[len(head) + i, tok]) for i, tok in enumerate(cont))
    assert ll == pytest.approx(want, abs=1e-4) and se == 0.0 and greedy
    wrong, _, wrong_greedy = continuation_logprob(run, head, _ids("bcd"))
    assert wrong < ll - 5 and not wrong_greedy


def test_diffusion_loglikelihood_of_one_token_is_exact_on_average(cycle_dir):
    """Masked diffusion, one continuation token: the conditional ELBO is exactly log p(x | head,
    [MASK]) (a lone masked token's bound has no slack), so the Monte Carlo mean over many draws
    of t must land within 4 standard errors of that one forward pass, and the error must shrink
    like 1/sqrt(draws). Would catch: the head noised or scored, a missing minus sign, the time
    weight dropped (the mean would be off by the mask rate)."""
    run = load_run(cycle_dir)
    head = _ids("bcdefgha")
    for cont in ([CYCLE.index("b")], [CYCLE.index("e")]):  # the cycle's next letter, and an unlikely one
        x = torch.tensor([*head, run.process.mask_id])[None]
        with torch.no_grad():
            exact = float(run.process.log_probs(run.model(x, torch.ones(1)))[0, -1, cont[0]])
        ll, se, _ = continuation_logprob(run, head, cont, mc_samples=1024, seed=3)
        assert abs(ll - exact) < 4 * se + 1e-6, (cont, ll, exact, se)
    ll64, se64, _ = continuation_logprob(run, head, [CYCLE.index("e")], mc_samples=64, seed=3)
    assert se64 > 2 * se  # 16x the draws: a quarter of the error


def test_diffusion_loglikelihood_ranks_the_right_continuation(cycle_dir):
    """A multi-token continuation: the cycle's true next letters get a far higher bound than a
    wrong shift of them, and are the greedy answer; the error is reported and finite."""
    run = load_run(cycle_dir)
    head = _ids("abcdef")
    good, se, greedy = continuation_logprob(run, head, _ids("gha"), mc_samples=32)
    bad, _, bad_greedy = continuation_logprob(run, head, _ids("bcd"), mc_samples=32)
    assert good > bad + 5 and greedy and not bad_greedy and 0 < se < 1 and math.isfinite(good)


def _task_files(tmp_path):
    rng = np.random.default_rng(0)
    mc, gen = [], []
    for _ in range(24):
        start, n = int(rng.integers(8)), int(rng.integers(5, 10))
        context = "".join(CYCLE[(start + i) % 8] for i in range(n))
        nxt = (start + n) % 8
        right = "".join(CYCLE[(nxt + i) % 8] for i in range(3))
        wrong = ["".join(CYCLE[(nxt + k + i) % 8] for i in range(3)) for k in (2, 4, 6)]
        label = int(rng.integers(4))
        choices = wrong[:label] + [right] + wrong[label:]
        mc.append({"context": context, "choices": choices, "label": label})
        gen.append({"context": context, "target": "".join(CYCLE[(nxt + i) % 8] for i in range(4))})
    (tmp_path / "mc.jsonl").write_text("".join(json.dumps(d) + "\n" for d in mc))
    (tmp_path / "gen.jsonl").write_text("".join(json.dumps(d) + "\n" for d in gen))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "cycle_mc.yaml").write_text(textwrap.dedent(f"""\
        task: cycle_mc
        dataset_path: json
        dataset_kwargs:
          data_files:
            test: {tmp_path / "mc.jsonl"}
        test_split: test
        output_type: multiple_choice
        doc_to_text: "{{{{context}}}}"
        doc_to_choice: "{{{{choices}}}}"
        doc_to_target: label
        target_delimiter: ""
        metric_list:
          - metric: acc
        """))
    (tasks / "cycle_gen.yaml").write_text(textwrap.dedent(f"""\
        task: cycle_gen
        dataset_path: json
        dataset_kwargs:
          data_files:
            test: {tmp_path / "gen.jsonl"}
        test_split: test
        output_type: generate_until
        doc_to_text: "{{{{context}}}}"
        doc_to_target: "{{{{target}}}}"
        target_delimiter: ""
        generation_kwargs:
          until: ["\\n"]
          max_gen_toks: 4
          do_sample: false
        metric_list:
          - metric: exact_match
        """))
    return tasks


def _lm_eval(tmp_path, tasks, run_dir, name):
    out = tmp_path / f"out_{name}"
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path / "hf")}
    r = subprocess.run([sys.executable, "-m", "textdiffusion", "lm-eval", "--model", "textdiffusion",
                        "--model_args", f"pretrained={run_dir},mc_samples=16,steps=4",
                        "--tasks", "cycle_mc,cycle_gen", "--include_path", str(tasks), "--output_path", str(out)],
                       capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    (path,) = glob.glob(str(out / "**" / "results_*.json"), recursive=True)
    results = json.loads(open(path).read())["results"]
    return results["cycle_mc"]["acc,none"], results["cycle_gen"]["exact_match,none"], r.stderr


def test_lm_eval_scores_diffusion_and_ar_far_above_chance(cycle_dir, ar_cycle_dir, tmp_path):
    """`textdiffusion lm-eval --model textdiffusion` on a local task (YAML + JSONL written here,
    no network): 4-way multiple choice of the next three letters of the cycle (chance 25%) and
    4-letter greedy continuation (chance 1/8^4); the diffusion run and its AR twin both get
    nearly all right (24 questions each); the diffusion log says its scores are bounds with a Monte Carlo error.
    Would catch: choices scored without their context (every choice alike: chance), the
    continuation cut at the wrong seam, generation that ignores the prompt."""
    tasks = _task_files(tmp_path)
    acc, em, log = _lm_eval(tmp_path, tasks, cycle_dir, "masked")
    assert acc >= 0.9 and em >= 0.75, (acc, em)  # the tiny model slips on a last letter now and then
    assert "ELBO bounds, Monte Carlo over t (16 draws each): median standard error" in log
    acc, em, _ = _lm_eval(tmp_path, tasks, ar_cycle_dir, "ar")
    assert acc >= 0.9 and em >= 0.9, (acc, em)


def test_lm_eval_bad_model_dir_is_one_line(tmp_path):
    """A model directory that does not exist: one line naming it, exit 2, no traceback."""
    r = subprocess.run([sys.executable, "-m", "textdiffusion", "lm-eval", "--model", "textdiffusion",
                        "--model_args", f"pretrained={tmp_path / 'nope'}", "--tasks", "cycle_mc",
                        "--include_path", str(_task_files(tmp_path))],
                       capture_output=True, text=True, timeout=300,
                       env={**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 2 and "Traceback" not in r.stderr and "nope" in r.stderr.strip().splitlines()[-1], r.stderr


@pytest.mark.parametrize("order", ["textdiffusion first", "lm_eval first"])
def test_import_registers_with_lm_eval_beside_its_own_models(order):
    """After `import textdiffusion` (before or after lm_eval), lm_eval's registry resolves
    "textdiffusion" to our model and still resolves its own ("dummy"). Would catch: the hook never
    firing, or our entry filling the empty registry first (lm_eval then never loads its own
    models, and "dummy" is unknown)."""
    imports = ("import textdiffusion; import lm_eval.api.registry as r" if order == "textdiffusion first"
               else "import lm_eval.api.registry as r; import textdiffusion")
    code = f"{imports}; print(r.get_model('textdiffusion').__name__, r.get_model('dummy').__name__)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.split() == ["TextDiffusionLM", "DummyLM"], r.stderr[-2000:]
