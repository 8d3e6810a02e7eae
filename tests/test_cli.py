"""The command line end to end, in subprocesses: train tiny -> sample -> eval, and bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from commands import EXE, cli, in_process  # noqa: F401 (the command line, as a process or in this one)

from textdiffusion.config import Config
from textdiffusion.evaluation import judge_perplexity
from textdiffusion.runs import load_run

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "configs" / "tiny.toml"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    lines = [f"the {a} {b} sat on the mat.\n" for a in ("cat", "dog", "bird", "fox") for b in ("red", "big", "old")]
    (d / "text.txt").write_text("".join(lines * 60))
    return d / "text.txt"


@pytest.fixture(scope="module")
def runs(corpus, tmp_path_factory):
    base = tmp_path_factory.mktemp("runs")
    cache = base / "cache"
    for process in ("masked", "uniform", "gaussian", "sedd-absorb", "sedd-uniform", "block", "ar"):
        command = cli if process == "masked" else in_process  # one in a subprocess, the rest in-process (suite time)
        r = command("train", "--data", corpus, "--out", base / process, "--config", TINY, "--process", process,
                    "--set", "train.max_steps=30", "--quiet", env_cache=cache)
        assert r.returncode == 0, r.stderr
        assert "parameters" in r.stderr
    return base, cache


def test_train_sample_eval(runs, corpus):
    base, cache = runs
    for process in ("masked", "uniform", "gaussian", "sedd-absorb", "sedd-uniform", "block", "ar"):
        run = base / process
        assert (run / "checkpoint" / "model.safetensors").exists() and (run / "tokenizer.json").exists()
        metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        assert metrics[-1]["step"] == 30
        r = cli("sample", run, "--json", "--num", "2", "--length", "20", "--prompt", "the ", "--seed", "1",
                env_cache=cache)
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert len(out["texts"]) == 2 and all(s.startswith("the ") for s in out["texts"])
        assert out["samples"] == out["texts"]  # the old key, kept for one release
        assert out["nfe"] >= 1 and out["tokens_per_second"] > 0
        again = json.loads(in_process("sample", run, "--json", "--num", "2", "--length", "20", "--prompt", "the ",
                                      "--seed", "1", env_cache=cache).stdout)  # the same draws in-process
        assert again["texts"] == out["texts"]
        evaluate = cli if process == "ar" else in_process  # one eval in a subprocess, the others in-process
        r = evaluate("eval", run, "--data", corpus, "--json", "--judge", base / "ar", "--num-samples", "2",
                     env_cache=cache)
        assert r.returncode == 0, r.stderr
        ev = json.loads(r.stdout)
        assert ev["split"] == "val" and ev["num_tokens"] > 0
        assert 0.0 <= ev["self_bleu"] <= 1.0 and 0.0 < ev["distinct_1"] <= 1.0 and 0.0 < ev["distinct_3"] <= 1.0
        assert 0 < ev["bits_per_token"] < 8 and ev["bits_per_byte"] > 0
        assert ev["exact"] == (process == "ar")
        # the judge's perplexity of exactly the samples reported (both of them: --num-samples 2)
        judge = load_run(base / "ar")
        assert len(ev["texts"]) == 2
        expected = judge_perplexity(judge.model, judge.tokenizer, ev["texts"])
        assert ev["judge_perplexity"] == pytest.approx(expected, rel=1e-5)


def test_eval_discrete_time_bound(runs, corpus):
    base, cache = runs
    for process in ("masked", "uniform"):
        r = in_process("eval", base / process, "--data", corpus, "--json", "--discrete-steps", "8", "--num-samples", "0",
                "--max-windows", "8", env_cache=cache)
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert out["discrete_steps"] == 8 and 0 < out["bits_per_token"] < 30
    r = in_process("eval", base / "ar", "--data", corpus, "--discrete-steps", "8", env_cache=cache)
    assert r.returncode == 2 and "masked and uniform" in r.stderr


def test_sampler_choice_and_text_output(runs):
    base, cache = runs
    r = cli("sample", base / "masked", "--sampler", "confidence", "--steps", "8", "--length", "16", env_cache=cache)
    assert r.returncode == 0 and r.stdout.strip()
    r = in_process("sample", base / "ar", "--sampler", "confidence", env_cache=cache)
    assert r.returncode == 2 and "needs a masked or sedd-absorb model" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("run, sampler, options", [
    ("masked", "margin", ["--schedule", "cosine"]), ("masked", "entropy", []), ("masked", "random", []),
    ("masked", "remdm", ["--eta", "0.1"]), ("masked", "semi-ar", ["--block-length", "8", "--order", "margin"]),
    ("masked", "threshold", ["--block-length", "8", "--threshold", "0.8", "--kv-cache", "prefix"]),
    ("block", "block", ["--kv-cache", "none"]), ("block", "block", ["--order", "confidence"]),
    ("uniform", "tau-leaping", []), ("gaussian", "ddim", [])])
def test_every_sampler_from_the_command_line(runs, run, sampler, options):
    base, cache = runs
    r = in_process("sample", base / run, "--sampler", sampler, *options, "--steps", "8", "--length", "16", "--num", "3",
            "--json", env_cache=cache)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["sampler"] == sampler and len(out["texts"]) == 3 and 1 <= out["nfe"] <= 8
    assert out["tokens_per_second"] > 0


@pytest.mark.parametrize("draft", ["masked", "block"])
def test_speculative_decoding_from_the_command_line(runs, draft):
    """`generate AR_RUN --sampler speculative --draft RUN` at temperature 0 prints the AR
    sampler's texts, with its statistics in --json; the Python API takes a loaded drafter; a
    drafter that is not a diffusion model or not a run is one line."""
    base, cache = runs
    common = ["--temperature", "0", "--length", "24", "--num", "2", "--json"]
    want = json.loads(in_process("generate", "the cat", "--model", base / "ar", *common, env_cache=cache).stdout)
    r = in_process("generate", "the cat", "--model", base / "ar", "--sampler", "speculative", "--draft", base / draft,
                   "--draft-len", "4", *common, env_cache=cache)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got["texts"] == want["texts"] and got["sampler"] == "speculative"
    assert got["stats"]["target_calls"] <= 2 * 24 and 0 <= got["stats"]["mean_accepted"] <= 4
    from textdiffusion import Pipeline

    pipe = Pipeline(load_run(base / "ar"))
    res = pipe.generate("the cat", length=24, num=2, temperature=0.0, sampler="speculative",
                        draft_run=Pipeline(load_run(base / draft)), draft_len=4)
    assert res.texts == want["texts"] and res.stats["rounds"] > 0
    r = in_process("generate", "--model", base / "ar", "--sampler", "speculative", "--draft", base / "uniform", env_cache=cache)
    assert r.returncode == 2 and "must be a masked or block diffusion model" in r.stderr, r.stderr
    r = in_process("generate", "--model", base / "ar", "--sampler", "speculative", "--draft", base / "nowhere", env_cache=cache)
    assert r.returncode == 2 and "not found" in r.stderr and "Traceback" not in r.stderr, r.stderr
    r = in_process("generate", "--model", base / "ar", "--sampler", "speculative", env_cache=cache)
    assert r.returncode == 2 and "needs a drafter: --draft" in r.stderr
    # serve --draft: checked before the server starts (each error ends the command, no port opened)
    r = in_process("serve", base / draft, "--draft", base / draft, "--port", "0", env_cache=cache)
    assert r.returncode == 2 and "a drafter speeds up an AR model" in r.stderr and "Traceback" not in r.stderr, r.stderr
    r = in_process("serve", base / "ar", "--draft", base / "uniform", "--port", "0", env_cache=cache)
    assert r.returncode == 2 and "must be a masked or block diffusion model" in r.stderr, r.stderr


def test_convert_an_ar_run_into_a_diffusion_model(runs, corpus, tmp_path):
    """`train --init AR_RUN --process masked` converts the AR twin (its architecture, tokenizer
    and weights; the logits shift; annealed attention) into an ordinary masked run that samples
    and evaluates; --process block converts without the shift; anything else is one line."""
    base, cache = runs
    out = tmp_path / "converted"
    r = in_process("train", "--init", base / "ar", "--process", "masked", "--data", corpus, "--out", out,
                   "--config", TINY, "--set", "train.max_steps=1", "--set", "train.lr=1e-9", "--set", "train.min_lr=0",
                   "--set", "train.ema=0", "--set", "adapt.anneal_steps=4", "--quiet", env_cache=cache)
    assert r.returncode == 0, r.stderr
    # one step of a vanishing learning rate: the run holds the AR weights, and under step 0's
    # (causal) mask with the shift it computes the AR model's predictions (catches the init's
    # weights not loaded, or the shift not set: planted, seen failing)
    import torch

    from textdiffusion.training.adapt import Annealed, annealed_mask

    conv, twin = load_run(out).model, load_run(base / "ar").model
    x = torch.randint(0, 20, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(Annealed(conv, annealed_mask(0, 4, 40))(x)[:, 1:], twin(x)[:, :-1], atol=1e-4)
    cfg = json.loads((out / "config.json").read_text())
    ar = json.loads((base / "ar" / "config.json").read_text())
    assert cfg["process"]["name"] == "masked" and cfg["model"]["logits_shift"] == 1
    assert {k: v for k, v in cfg["model"].items() if k != "logits_shift"} == {
        k: v for k, v in ar["model"].items() if k != "logits_shift"}
    assert cfg["adapt"]["anneal_steps"] == 4
    r = in_process("sample", out, "--steps", "8", "--length", "16", "--json", env_cache=cache)
    assert r.returncode == 0 and json.loads(r.stdout)["texts"], r.stderr
    r = in_process("train", "--init", base / "ar", "--process", "block", "--data", corpus, "--out", tmp_path / "blk",
                   "--config", TINY, "--set", "train.max_steps=4", "--quiet", env_cache=cache)
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "blk" / "config.json").read_text())["model"]["logits_shift"] == 0
    for init, process, message in [("masked", "block", "drop --process"), ("ar", "uniform", "drop --process"),
                                   ("ar", "block", "adapt.anneal_steps anneals a masked model")]:
        extra = ["--set", "adapt.anneal_steps=3"] if "anneal" in message else []
        r = in_process("train", "--init", base / init, "--process", process, "--data", corpus, "--out",
                       tmp_path / f"bad-{init}-{process}", "--config", TINY, *extra, "--quiet", env_cache=cache)
        assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_sampler_options_are_checked(runs):
    base, cache = runs
    r = in_process("sample", base / "masked", "--sampler", "ancestral", "--threshold", "0.5", env_cache=cache)
    assert r.returncode == 2 and "takes no threshold option" in r.stderr
    r = in_process("sample", base / "masked", "--sampler", "threshold", "--kv-cache", "sideways", env_cache=cache)
    assert r.returncode == 2 and "none, prefix or dual" in r.stderr
    r = in_process("sample", base / "block", "--steps", "2", "--length", "40", env_cache=cache)
    assert r.returncode == 2 and "at least" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("run", ["masked", "uniform", "gaussian", "sedd-absorb"])
def test_infill_and_edit_from_the_command_line(runs, run):
    base, cache = runs
    r = cli("infill", base / run, "the [MASK:3] sat[MASK]on the mat.\\n[MASK:2-4] ", "--num", "2", "--steps", "8",
            "--candidates", "2", "--json", env_cache=cache)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    for text, fills in zip(out["texts"], out["fills"]):
        assert text == f"the {fills[0]} sat{fills[1]}on the mat.\n{fills[2]} "  # fixed text verbatim, \\n a newline
        assert len(fills[0]) == 3 and len(fills[1]) == 1 and 2 <= len(fills[2]) <= 4
    text = "the cat sat on the mat."
    r = in_process("edit", base / run, "--text", text, "--span", "4:7", "--strength", "0.8", "--num", "3", "--json",
            "--steps", "8", env_cache=cache)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert len(out["texts"]) == 3 and out["span"] == [4, 7] and out["strength"] == 0.8
    assert all(t[:4] == text[:4] and t[7:] == text[7:] and len(t) == len(text) for t in out["texts"])
    r = in_process("edit", base / run, "--text", "the [EDIT]cat[/EDIT] sat on the mat.", "--strength", "1", "--steps", "8",
            env_cache=cache)
    assert r.returncode == 0 and r.stdout.startswith("the ") and r.stdout.rstrip("\n").endswith(" sat on the mat.")


def test_infill_and_edit_errors(runs, tmp_path):
    base, cache = runs
    for args, needle in [
        (("infill", base / "ar", "the [MASK:3] sat"), "only the text to the left"),
        (("infill", base / "block", "the [MASK:3] sat"), "only the text to the left"),
        (("infill", base / "masked", "no holes"), "no hole"),
        (("infill", base / "masked", "the [MASK:900]"), "context"),
        (("infill", base / "masked", "--file", tmp_path / "missing.txt"), "No such file"),
        (("edit", base / "masked", "--text", "the cat", "--span", "4-7"), "A:B"),
        (("edit", base / "masked", "--text", "the cat", "--span", "4:70"), "span"),
        (("edit", base / "masked", "--text", "the cat", "--span", "0:3", "--strength", "2"), "strength"),
        (("edit", base / "masked", "--text", "the cat"), "[EDIT]"),
    ]:
        line = _one_line_error(in_process(*args, env_cache=cache))
        assert needle in line, (args, line)
    r = cli("infill", base / "ar", "the [MASK:3]", "--json", env_cache=cache)  # a plain continuation is fine
    assert r.returncode == 0, r.stderr


def test_sft_train_and_chat(runs, tmp_path):
    base, cache = runs
    pairs = tmp_path / "pairs.jsonl"
    animals = ("cat", "dog", "bird", "fox")
    pairs.write_text("".join(json.dumps({"prompt": f"where is the {a}?", "response": f"the {a} sat on the mat."}) + "\n"
                             for a in animals * 10))
    r = cli("train", "--sft", "--data", pairs, "--out", tmp_path / "chat", "--config", TINY,
            "--set", "train.max_steps=10", "--quiet", env_cache=cache)
    assert r.returncode == 0, r.stderr
    r = cli("chat", tmp_path / "chat", "where is the cat?", "--json", "--num", "2", "--steps", "8", env_cache=cache)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert len(out["replies"]) == 2 and all("<|" not in x for x in out["replies"]) and out["nfe"] >= 1
    assert "not instruction-tuned" not in r.stderr
    r = subprocess.run([str(EXE), "chat", str(tmp_path / "chat"), "--steps", "4", "--json"], input="the cat\nwhere?\n\n",
                       capture_output=True, text=True, timeout=300, env={**os.environ, "TEXTDIFFUSION_CACHE": str(cache)})
    turns = [json.loads(x) for x in r.stdout.splitlines()]
    assert r.returncode == 0 and [t["message"] for t in turns] == ["the cat", "where?"], r.stderr  # one reply per turn
    # a character the tokenizer never saw is refused by name (it used to be dropped: "hello" became "heo");
    # standard input that is not UTF-8 is named as such (it was a utf-32 encode error); a run not tuned
    # with --sft answers with a note (it used to answer as if it were)
    assert "'l' (U+006C)" in _one_line_error(in_process("chat", tmp_path / "chat", "hello", "--steps", "2"))
    latin1 = in_process("chat", tmp_path / "chat", "--steps", "2", stdin=b"where is the caf\xe9?\n")
    assert "line 1 of standard input is not UTF-8" in _one_line_error(latin1)
    r = in_process("chat", base / "masked", "the cat", "--steps", "2")
    assert r.returncode == 0 and "not instruction-tuned (train --sft)" in r.stderr
    # fine-tune the pretrained masked run on the pairs (its tokenizer, model and process)
    r = cli("train", "--sft", "--init", base / "masked", "--data", pairs, "--out", tmp_path / "tuned",
            "--set", "train.max_steps=5", "--quiet", env_cache=cache)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "tuned" / "tokenizer.json").read_text() == (base / "masked" / "tokenizer.json").read_text()
    line = _one_line_error(in_process("train", "--sft", "--data", base / "masked" / "config.json", "--out", tmp_path / "x",
                               "--config", TINY, env_cache=cache))
    assert "prompt" in line
    line = _one_line_error(in_process("train", "--init", tmp_path / "nothing", "--data", pairs, "--out", tmp_path / "y",
                               env_cache=cache))
    assert "not found" in line or "no such" in line.lower()


def test_fine_tune_a_shipped_model_by_name(corpus, tmp_path):
    """--init takes a shipped model's name: its tokenizer, model and process carry over."""
    from textdiffusion.sampling.cards import available

    r = cli("train", "--init", "english", "--data", corpus, "--out", tmp_path / "mine", "--set", "train.max_steps=2",
            "--set", "train.batch_size=2", "--set", "train.eval_batches=1", "--quiet", env_cache=tmp_path / "cache")
    assert r.returncode == 0, r.stderr
    shipped = Path(available()["english"]["path"])
    assert (tmp_path / "mine" / "tokenizer.json").read_text() == (shipped / "tokenizer.json").read_text()
    # as the library reads the shipped config: fields added since it was written take their defaults
    assert json.loads((tmp_path / "mine" / "config.json").read_text())["model"] == \
        Config.load(shipped / "config.json").to_dict()["model"]
    line = _one_line_error(in_process("train", "--init", "klingon", "--data", corpus, "--out", tmp_path / "x",
                               env_cache=tmp_path / "cache"))
    assert "no model named 'klingon'" in line and "english" in line


def test_fine_tune_the_ar_twin_with_fill_in_the_middle(runs, corpus, tmp_path):
    """The config is checked against the --init run's process: an AR run may go on with
    fill-in-the-middle windows; a diffusion run may not."""
    base, cache = runs
    r = cli("train", "--init", base / "ar", "--data", corpus, "--out", tmp_path / "fim", "--set", "data.fim_rate=0.5",
            "--set", "train.max_steps=2", "--quiet", env_cache=cache)
    assert r.returncode == 0, r.stderr
    cfg = json.loads((tmp_path / "fim" / "config.json").read_text())
    assert cfg["process"]["name"] == "ar" and cfg["data"]["fim_rate"] == 0.5
    line = _one_line_error(in_process("train", "--init", base / "masked", "--data", corpus, "--out", tmp_path / "no",
                               "--set", "data.fim_rate=0.5", env_cache=cache))
    assert "fim_rate is for the AR twin" in line


def test_labels_and_guidance_from_the_command_line(runs, tmp_path):
    base, cache = runs
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"text": f"the {a} sat on the mat.", "label": a}) + "\n"
                            for a in ("cat", "dog") * 30))
    r = cli("train", "--labels", "--data", docs, "--out", tmp_path / "lab", "--config", TINY,
            "--set", "train.max_steps=5", "--quiet", env_cache=cache)
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "lab" / "labels.json").read_text()) == ["cat", "dog"]
    # five steps leave the label embedding near its small initialisation: make it loud, so the
    # check below sees whether the label reaches the network at all
    from safetensors.torch import load_file, save_file

    for name in ("model", "ema"):
        path = tmp_path / "lab" / "checkpoint" / f"{name}.safetensors"
        if path.exists():
            weights = load_file(str(path))
            weights["label.weight"] = weights["label.weight"] * 300.0
            save_file(weights, str(path))
    for extra in ([], ["--guidance", "2"]):
        r = cli("sample", tmp_path / "lab", "--label", "dog", "--num", "2", "--length", "10", "--steps", "5",
                "--json", *extra, env_cache=cache)
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert len(out["texts"]) == 2
        # the label reaches the model: another label, the same (default) seed, other samples
        other = in_process("sample", tmp_path / "lab", "--label", "cat", "--num", "2", "--length", "10", "--steps", "5",
                    "--json", *extra, env_cache=cache)
        assert json.loads(other.stdout)["texts"] != out["texts"]
    r = in_process("infill", tmp_path / "lab", "the [MASK:3] sat", "--label", "cat", "--guidance", "1", "--json", env_cache=cache)
    assert r.returncode == 0, r.stderr
    for args, needle in [
        (("sample", tmp_path / "lab", "--label", "cow"), "unknown label"),
        (("sample", tmp_path / "lab", "--guidance", "2"), "needs --label"),
        (("sample", base / "masked", "--label", "cat"), "not trained with labels"),
        (("sample", base / "masked", "--guidance", "2", "--prompt", "the"), "guidance needs a condition"),
        (("sample", tmp_path / "lab", "--label", "cat", "--guidance", "-1"), "must be >= 0"),
        (("train", "--labels", "--data", base / "masked" / "config.json", "--out", tmp_path / "z", "--config", TINY),
         "label"),
    ]:
        line = _one_line_error(in_process(*args, env_cache=cache))
        assert needle in line, (args, line)


def test_generate_watch_and_models(runs):
    base, cache = runs
    r = cli("generate", "the ", "--model", base / "masked", "--length", "12", "--steps", "6", "--json", env_cache=cache)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["texts"][0].startswith("the ") and out["nfe"] >= 1
    r = cli("generate", "the ", "--model", base / "masked", "--length", "12", "--steps", "6", "--watch", env_cache=cache)
    steps = [line for line in r.stderr.splitlines() if line.startswith("step ")]
    assert r.returncode == 0 and len(steps) >= 2 and "░" in steps[0] and "░" not in steps[-1], r.stderr
    assert r.stdout.startswith("the ")
    r = cli("models", env_cache=cache)
    assert r.returncode == 0
    line = _one_line_error(in_process("generate", "hi", "--model", "no-such-model", env_cache=cache))
    assert "no model named" in line
    line = _one_line_error(in_process("generate", "hi", "--model", base / "nothing-here", env_cache=cache))
    assert "not found" in line


def test_generate_fills_holes_and_follows_the_model_card(runs, tmp_path):
    base, cache = runs
    r = cli("generate", "th[MASK:2] cat\\n", "--model", base / "masked", "--steps", "2", "--json", env_cache=cache)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["texts"][0] == "th" + out["fills"][0][0] + " cat\n"  # \n typed in the shell: a newline
    carded = tmp_path / "carded"
    r = in_process("export", base / "masked", "--out", carded, "--description", "a test card", "--default", "sampler=threshold",
            "--default", "steps=5", "--default", "threshold=0.5", "--default", "temperature=0.5", env_cache=cache)
    assert r.returncode == 0, r.stderr
    assert json.loads((carded / "card.json").read_text())["generate"]["threshold"] == 0.5
    assert json.loads((carded / "checkpoint" / "state.json").read_text())["dtype"] == "bfloat16"
    r = in_process("generate", "the", "--model", carded, "--length", "8", "--json", env_cache=cache)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["sampler"] == "threshold" and out["steps"] == 5
    # the card's threshold option is not forced on another sampler; flags beat the card
    r = in_process("generate", "the", "--model", carded, "--length", "8", "--sampler", "confidence", "--steps", "4", "--json",
            env_cache=cache)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["sampler"] == "confidence" and out["steps"] == 4
    assert "exists and is not empty" in _one_line_error(in_process("export", base / "masked", "--out", carded, env_cache=cache))
    for bad, needle in ((("--default", "nope=1"), "unknown setting 'nope'"), (("--default", "steps=abc"), "whole number"),
                        (("--default", "steps=4.0"), "whole number"), (("--default", "steps"), "KEY=VALUE"),
                        (("--default", "threshold=0.5"), "takes no threshold"),
                        (("--default", "sampler=ar"), "needs a ar model")):
        line = _one_line_error(in_process("export", base / "masked", "--out", tmp_path / "x", *bad, env_cache=cache))
        assert needle in line and not (tmp_path / "x").exists(), (bad, line)
    # a re-export keeps the card it does not change
    r = in_process("export", carded, "--out", tmp_path / "again", "--description", "new words", env_cache=cache)
    assert r.returncode == 0, r.stderr
    again = json.loads((tmp_path / "again" / "card.json").read_text())
    assert again["description"] == "new words" and again["generate"]["sampler"] == "threshold"
    line = _one_line_error(in_process("generate", "a[MASK]b", "--model", carded, "--length", "4", env_cache=cache))
    assert "--length does not apply" in line
    # holes follow the card's infill settings when it has them; plain generation its generate ones
    r = in_process("generate", "th[MASK:2] cat", "--model", carded, "--json", env_cache=cache)
    assert r.returncode == 0 and json.loads(r.stdout)["sampler"] == "threshold", r.stderr  # no infill section yet
    holes = tmp_path / "holes"
    r = in_process("export", carded, "--out", holes, "--infill-default", "sampler=confidence", "--infill-default",
            "temperature=0", "--infill-default", "steps=3", env_cache=cache)
    assert r.returncode == 0, r.stderr
    card = json.loads((holes / "card.json").read_text())
    assert card["infill"] == {"sampler": "confidence", "temperature": 0, "steps": 3}
    assert card["generate"]["sampler"] == "threshold"
    for command in (("generate", "th[MASK:2] cat", "--model", holes), ("infill", holes, "th[MASK:2] cat")):
        r = in_process(*command, "--json", env_cache=cache)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["sampler"] == "confidence" and json.loads(r.stdout)["nfe"] <= 3, command
    r = in_process("generate", "the", "--model", holes, "--length", "8", "--json", env_cache=cache)
    assert r.returncode == 0 and json.loads(r.stdout)["sampler"] == "threshold", r.stderr
    line = _one_line_error(in_process("export", carded, "--out", tmp_path / "x", "--infill-default", "nope=1", env_cache=cache))
    assert "unknown setting 'nope'" in line and "--infill-default" in line and not (tmp_path / "x").exists()
    (carded / "card.json").write_text("{not json")
    assert "card.json" in _one_line_error(in_process("generate", "the", "--model", carded, env_cache=cache))
    (carded / "card.json").write_text(json.dumps({"generate": {"steps": "many"}}))
    assert "steps must be a whole number" in _one_line_error(in_process("generate", "the", "--model", carded, env_cache=cache))


def test_resume_continues_and_refuses_to_overwrite(runs, corpus):
    base, cache = runs
    run = base / "masked"
    r = cli("train", "--data", corpus, "--out", run, "--config", TINY, env_cache=cache)
    assert r.returncode == 2 and "--resume" in r.stderr  # never clobbers a trained run
    r = cli("train", "--out", run, "--resume", "--set", "train.max_steps=40", "--quiet", env_cache=cache)
    assert r.returncode == 0, r.stderr
    assert json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 40
    assert json.loads((run / "config.json").read_text())["train"]["max_steps"] == 40  # saved with the run
    r = cli("train", "--out", run, "--resume", "--set", "model.n_layer=3", env_cache=cache)
    assert r.returncode == 2 and "only train" in r.stderr


def test_train_never_writes_into_a_folder_someone_owns(corpus, tmp_path):
    """--out a non-empty folder that is not a run (here holding a config.json of the user's and
    notes) is refused by name with nothing touched, and so is a file; an empty folder is fine.
    Catches the run's config.json / tokenizer.json / metrics.jsonl written over the user's files
    without a word, as before the fix (issue 21, item 2)."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.json").write_text('{"my": "settings"}')
    (mine / "notes.txt").write_text("keep me")
    r = cli("train", "--data", corpus, "--out", mine, "--config", TINY, "--quiet")
    assert "not empty and holds no run (config.json, notes.txt)" in _one_line_error(r)
    assert (mine / "config.json").read_text() == '{"my": "settings"}' and sorted(p.name for p in mine.iterdir()) == [
        "config.json", "notes.txt"]
    (tmp_path / "afile").write_text("x")
    assert "is a file" in _one_line_error(in_process("train", "--data", corpus, "--out", tmp_path / "afile", "--config", TINY))
    empty = tmp_path / "empty"
    empty.mkdir()
    r = cli("train", "--data", corpus, "--out", empty, "--config", TINY, "--set", "train.max_steps=2", "--quiet")
    assert r.returncode == 0, r.stderr


def _one_line_error(r):
    assert r.returncode != 0
    assert "Traceback" not in r.stderr, r.stderr
    lines = [x for x in r.stderr.strip().splitlines() if x.strip()]
    assert lines and "error" in lines[-1].lower(), r.stderr
    return lines[-1]


def test_bad_input_gives_one_line_errors(tmp_path, runs):
    _, cache = runs
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "model.safetensors").write_text("x")
    (tmp_path / "bad.toml").write_text("[train\n")
    cases = [
        (("train", "--data", tmp_path / "missing.txt", "--out", tmp_path / "o1", "--config", TINY), "not found"),
        (("train", "--data", tmp_path / "empty.txt", "--out", tmp_path / "o2", "--config", TINY), "empty"),
        (("train", "--data", tmp_path / "empty.txt", "--out", tmp_path / "o3", "--set", "train.bogus=1"), "unknown config key"),
        (("train", "--data", tmp_path / "empty.txt", "--out", tmp_path / "o4", "--config", tmp_path / "bad.toml"), "TOML"),
        (("sample", tmp_path / "no-such-run"), "not found"),
        (("sample", tmp_path / "junk"), "config.json"),
        (("eval", tmp_path / "no-such-run", "--data", tmp_path / "empty.txt"), "not found"),
        (("sample", runs[0] / "masked", "--length", "5000"), "context"),
        (("sample", runs[0] / "masked", "--device", "bogus"), "unknown device"),
        (("sample", runs[0] / "masked", "--num", "0"), "at least 1"),
        (("eval", runs[0] / "masked", "--data", tmp_path / "empty.txt", "--mc-samples", "0"), "at least 1"),
        (("eval", runs[0] / "masked", "--data", tmp_path / "empty.txt", "--max-windows", "-1"), "at least 0"),
        (("train", "--data", tmp_path / "empty.txt", "--out", tmp_path / "o6", "--process", "ar",
          "--set", "model.time_cond=true"), "time_cond"),
        (("train", "--data", tmp_path / "empty.txt", "--out", tmp_path / "o7", "--set", "train.device=tpu9"), "device"),
    ]
    for args, needle in cases:
        line = _one_line_error(in_process(*args, env_cache=cache))
        assert needle in line, (args, line)
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 8))  # a failed train leaves no --out behind
    r = cli("train", "--out", tmp_path / "o5")
    assert r.returncode == 2 and "Traceback" not in r.stderr and "--data" in r.stderr


def test_help_is_useful():
    r = cli("--help")
    assert r.returncode == 0 and "train" in r.stdout and "sample" in r.stdout and "eval" in r.stdout
    for command, flag in (("train", "--resume"), ("sample", "--json"), ("eval", "--json"), ("infill", "[MASK:n]"),
                          ("edit", "--strength"), ("chat", "MESSAGE"), ("train", "--sft"),
                          ("generate", "--watch"), ("train-classifier", "--layers"), ("export", "--dtype")):
        r = cli(command, "--help")
        assert r.returncode == 0 and flag in r.stdout, (command, r.stdout)


def test_export_records_no_machine_paths_and_eval_still_finds_its_split(runs, corpus, tmp_path):
    """An exported model keeps only the name of its training file; eval of that model on the
    same file (here a copy in another folder) still scores the held-out split, not all of it."""
    base, cache = runs
    r = cli("export", base / "masked", "--out", tmp_path / "exported", env_cache=cache)
    assert r.returncode == 0, r.stderr
    cfg = json.loads((tmp_path / "exported" / "config.json").read_text())
    assert cfg["data"]["path"] == corpus.name and str(tmp_path.parent) not in json.dumps(cfg)
    elsewhere = tmp_path / "copy"
    elsewhere.mkdir()
    (elsewhere / corpus.name).write_text(corpus.read_text())
    other = elsewhere / "other.txt"
    other.write_text(corpus.read_text())
    split = []
    for data in (corpus, elsewhere / corpus.name, other):
        r = in_process("eval", tmp_path / "exported", "--data", data, "--json", "--num-samples", "0", "--max-windows", "2",
                env_cache=cache)
        assert r.returncode == 0, r.stderr
        split.append(json.loads(r.stdout)["split"])
    assert split == ["val", "val", "all"]


def test_names_and_holes_are_checked_before_torch_loads():
    """`models`, an unknown model or sampler name and a malformed hole are answered from the
    registry, the cards and the template parser: one-line errors, and torch never imported
    (16-20 s on a busy machine)."""
    code = ("import sys; from textdiffusion.cli import main\n"
            "for argv in (['models'], ['generate', 'hi', '--model', 'no-such-model'], "
            "['generate', 'hi', '--sampler', 'nope'], ['generate', 'a [MASK:x] b'], ['generate', 'a [mask:3] b'], "
            "['generate', 'a [MASK:']):\n"
            "    print(main(argv), 'torch' in sys.modules)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.stdout.split("\n")[-7:-1] == ["0 False"] + ["2 False"] * 5, (r.stdout, r.stderr)
    errors = [x for x in r.stderr.splitlines() if x.startswith("textdiffusion: error:")]
    assert len(errors) == 5 and "no model named" in errors[0] and "unknown sampler 'nope'" in errors[1]
    assert all("malformed hole" in e for e in errors[2:]) and "'[MASK:x]'" in errors[2], errors


def test_internal_errors_are_reported_as_bugs_and_debug_shows_the_traceback(monkeypatch, capsys):
    """An exception that is not bad input (not the project's own error type, OSError or out of
    memory) is a bug: the message says so, exit 70, and --debug raises it with its traceback.
    Bad input stays a one-line error with exit 2."""
    from textdiffusion import cli as cli_module
    from textdiffusion.cli import models

    def broken(args):
        raise KeyError("oops")

    monkeypatch.setattr(models, "main", broken)
    assert cli_module.main(["models"]) == 70
    err = capsys.readouterr().err
    assert "internal error (a bug, not your input): KeyError" in err and "--debug" in err
    with pytest.raises(KeyError):
        cli_module.main(["--debug", "models"])
    assert cli_module.main(["generate", "a [MASK:x]"]) == 2
    assert "malformed hole" in capsys.readouterr().err


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM", "SIGHUP"])
def test_a_stop_signal_checkpoints_and_prints_the_command_that_resumes(corpus, tmp_path, signame):
    """The first Ctrl-C, SIGTERM (schedulers, ``kill``) or SIGHUP stops after the current step,
    checkpoints it, exits 128 + the signal's number and prints the exact command that continues;
    that command (run as printed, for Ctrl-C) finishes the run. Catches SIGTERM/SIGHUP killing the run with no
    save and no message (exit -15/-1, up to ckpt_every - 1 steps lost), as before the fix."""
    import shlex
    import signal
    import time

    signum = getattr(signal, signame)

    run = tmp_path / "r"
    cmd = [str(EXE)] if EXE.exists() else [sys.executable, "-m", "textdiffusion"]
    proc = subprocess.Popen([*cmd, "train", "--data", str(corpus), "--out", str(run), "--config", str(TINY),
                             "--set", "train.max_steps=100000", "--set", "train.ckpt_every=100000",
                             "--set", "train.log_every=1", "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = run / "metrics.jsonl"
    try:
        for _ in range(600):  # at most 60 s for three logged steps (no periodic checkpoint comes)
            if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
                break
            time.sleep(0.1)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signum, err
    assert ("interrupted" if signame == "SIGINT" else f"stopped by {signame}") in err
    line = [x for x in err.splitlines() if "continue with:" in x][-1]
    again = shlex.split(line.split("continue with:", 1)[1])
    assert again[:2] == ["textdiffusion", "train"] and "--resume" in again
    step = json.loads((run / "checkpoint" / "state.json").read_text())["step"]  # only the stop can have saved it
    assert step >= 3
    if signame != "SIGINT":  # the printed command is the same for every signal: run it once (suite time)
        return
    r = subprocess.run([*cmd, *again[1:], "--set", f"train.max_steps={step + 3}"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert json.loads((run / "checkpoint" / "state.json").read_text())["step"] == step + 3
