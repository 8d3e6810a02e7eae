"""The Python API: generate / infill / edit / score / save_pretrained -> from_pretrained round trip."""

import os
import random

import pytest
import torch
from markov import tokenizer

from textdiffusion import Pipeline, Result
from textdiffusion.runs.checkpoint import CheckpointError
from textdiffusion.tokenizers import MASK_GLYPH

CONTEXT = 24


def test_generate_infill_edit(cycle_dir):
    pipe = Pipeline.from_pretrained(cycle_dir)
    out = pipe.generate("abc", length=12, steps=12, num=2, seed=0, trace=True, temperature=0.0)
    assert isinstance(out, Result) and out.text.startswith("abc") and len(out.texts) == 2
    assert out.nfe >= 1 and out.seconds > 0 and out.tokens.shape == (2, 15)
    assert MASK_GLYPH in out.trace[0] and MASK_GLYPH not in out.trace[-1] and out.trace[-1] == out.text
    assert out.text == "abcdefghabcdefg"  # the trained model continues the cycle (greedy: no luck involved)
    filled = pipe.infill("ab[MASK:3]fgh", steps=3)
    assert filled.text == "abcdefgh" and filled.fills == [["cde"]]
    # holes in a generate prompt are filled, as `textdiffusion generate` does (they were kept as text)
    assert pipe.generate("ab[MASK:3]fgh", steps=3).fills == [["cde"]]
    with pytest.raises(ValueError, match="length does not apply"):
        pipe.generate("ab[MASK:3]fgh", length=4)
    edited = pipe.edit("abcdefgh", (2, 5), strength=1.0, steps=3)
    assert edited.text[:2] == "ab" and edited.text[5:] == "fgh" and len(edited.text) == 8



def test_each_request_checks_its_memory_once(cycle_dir, monkeypatch):
    """A generate, infill or edit call estimates its sampling memory once, before its canvas is
    made (the check is a refusal's only chance to come before the allocation; a second and third
    one only cost). Counted with a spy on the one estimate every request goes through.
    Catches a builder that checks the request and then hands the canvas to a path that checks it
    again (planted: prompt_task's check_request before resolve_canvas(canvas), and Plan.generate
    resolving its already-checked canvas: 2-3 checks each)."""
    import textdiffusion.sampling.base as base

    counted = []
    real = base.check_sampling_memory
    monkeypatch.setattr(base, "check_sampling_memory", lambda model, *a: (counted.append(a), real(model, *a))[1])
    pipe = Pipeline.from_pretrained(cycle_dir)
    for call in (lambda: pipe.generate("abc", length=6, steps=3), lambda: pipe.generate("abc", length=6, steps=3, num=2),
                 lambda: pipe.infill("ab[MASK:3]fgh", steps=3), lambda: pipe.edit("abcdefgh", (2, 5), steps=3)):
        counted.clear()
        call()
        assert len(counted) == 1, counted

def test_score_prefers_real_structure(cycle_dir):
    pipe = Pipeline.from_pretrained(cycle_dir)
    text = "abcdefghabcdefgh"
    shuffled = "".join(random.Random(0).sample(text, len(text)))
    assert pipe.score(text) < pipe.score(shuffled) - 10  # bits
    with pytest.raises(ValueError, match="empty"):
        pipe.score("")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_save_pretrained_round_trips(cycle_dir, tmp_path, dtype):
    pipe = Pipeline.from_pretrained(cycle_dir)
    saved = pipe.save_pretrained(tmp_path / "saved", dtype=dtype)
    again = Pipeline.from_pretrained(saved)
    a = pipe.generate("", length=16, steps=8, num=3, seed=5, temperature=1.0)
    b = again.generate("", length=16, steps=8, num=3, seed=5, temperature=1.0)
    if dtype == "float32":
        assert a.texts == b.texts and torch.equal(a.tokens, b.tokens)
    else:  # rounded weights: the same model up to bf16 precision, the same answer on the easy task
        assert again.generate("abc", length=8, steps=8).text == pipe.generate("abc", length=8, steps=8).text
    sizes = sum(f.stat().st_size for f in saved.rglob("*.safetensors"))
    full = sum(p.numel() for p in pipe.model.parameters()) * (4 if dtype == "float32" else 2)
    assert sizes < full * 1.1
    umask = os.umask(0)
    os.umask(umask)
    for f in saved.rglob("*.safetensors"):  # as readable as every other file (safetensors alone: 0600)
        assert f.stat().st_mode & 0o777 == 0o666 & ~umask, oct(f.stat().st_mode)
    with pytest.raises(FileExistsError):
        pipe.save_pretrained(saved)


def test_missing_or_corrupt_models_fail_clearly(tmp_path, cycle_dir):
    with pytest.raises(CheckpointError, match="not found"):
        Pipeline.from_pretrained(tmp_path / "nothing")
    bad = Pipeline.from_pretrained(cycle_dir).save_pretrained(tmp_path / "bad")
    (bad / "checkpoint" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="corrupt"):
        Pipeline.from_pretrained(bad)
    with pytest.raises(ValueError, match="dtype"):
        Pipeline.from_pretrained(cycle_dir).save_pretrained(tmp_path / "x", dtype="int8")


def _watched(tok, watch):
    """A trace recorder that feeds ``watch`` its frames, as ``generate --watch`` wires them."""
    from textdiffusion.sampling.trace import TraceRecorder

    return TraceRecorder(tok.mask_id, rows=1, on_frame=watch)


def test_terminal_watch_marks_masks_and_new_tokens():
    """--watch draws the trace's frames: masks dim, the step's new tokens bold; a saved trace
    replays the same picture. Catches a watch that ignores the frame's changed positions."""
    import io

    from textdiffusion.sampling.base import StepOutput
    from textdiffusion.viz.terminal import DIM, NEW, TerminalWatch

    tok = tokenizer()
    stream = io.StringIO()
    watch = TerminalWatch(tok, steps=2, stream=stream, interactive=True)
    rec = _watched(tok, watch)
    a, m = int(tok.encode("a")[0]), tok.mask_id
    x = torch.tensor([[a, a, m]])
    rec(0, StepOutput(x, None, torch.tensor([[False, True, False]])))
    rec(1, StepOutput(torch.tensor([[a, a, a]]), None, torch.tensor([[False, False, True]])))
    text = stream.getvalue()
    assert f"a{NEW}a" in text and f"{DIM}{MASK_GLYPH}" in text  # step 1: second a new, third masked
    assert "\x1b[2F\x1b[J" in text  # step 2 redraws over step 1
    replay = io.StringIO()
    TerminalWatch(tok, steps=2, stream=replay, interactive=True).play(
        rec.to_dict(texts=["aaa"], sampler="x", process="masked", prompt_length=0))
    assert replay.getvalue().startswith(text)
    piped = io.StringIO()
    _watched(tok, TerminalWatch(tok, steps=1, stream=piped, interactive=False))(0, StepOutput(x, None, x != m))
    assert piped.getvalue() == f"step 1/1 | aa{MASK_GLYPH}\n"


def test_terminal_watch_redraws_by_screen_rows_and_leaves_the_text_once():
    """Known answer: on a 10-column terminal a 25-character row takes 3 screen rows, so with the
    step line the redraw goes 4 rows up (counting newlines said 2 and left stale frames behind);
    finish() clears the last view, so the final text the command prints stands once. Catches
    the newline count and a finish that leaves the view (each planted and seen failing)."""
    import io

    from textdiffusion.sampling.base import StepOutput
    from textdiffusion.viz.terminal import TerminalWatch, screen_rows

    assert screen_rows("\x1b[1;32mabc\x1b[0m\n" + "x" * 25, 10) == 1 + 3
    tok = tokenizer()
    a = int(tok.encode("a")[0])
    stream = io.StringIO()
    watch = TerminalWatch(tok, steps=2, stream=stream, interactive=True, columns=10)
    rec = _watched(tok, watch)
    row = torch.full((1, 25), a)
    rec(0, StepOutput(row, None, torch.zeros(1, 25, dtype=torch.bool)))
    rec(1, StepOutput(row, None, torch.zeros(1, 25, dtype=torch.bool)))
    assert "\x1b[4F\x1b[J" in stream.getvalue() and "\x1b[2F" not in stream.getvalue()
    watch.finish()
    assert stream.getvalue().endswith("\x1b[4F\x1b[Jstep 2/2: done\n")


def test_model_card_settings_fill_what_a_call_leaves_unset():
    from textdiffusion.sampling.cards import fill_settings

    card = {"sampler": "threshold", "steps": 32, "threshold": 0.8, "temperature": 0.7}
    out = fill_settings({"steps": None, "sampler": None, "temperature": None, "threshold": None}, card)
    assert out == {"steps": 32, "sampler": "threshold", "temperature": 0.7, "threshold": 0.8, "top_k": 0, "top_p": 1.0}
    out = fill_settings({"steps": 8, "sampler": "confidence", "temperature": 1.0, "threshold": None}, card)
    assert out == {"steps": 8, "sampler": "confidence", "temperature": 1.0, "threshold": None, "top_k": 0, "top_p": 1.0}
    assert fill_settings({"sampler": None}, {}) == {"sampler": None, "steps": 64, "temperature": 1.0, "top_k": 0,
                                                     "top_p": 1.0}


@pytest.mark.parametrize("call, name", [
    (lambda p: p.generate("abc", length=-3), "length"), (lambda p: p.generate("abc", num=0), "num"),
    (lambda p: p.generate("abc", num=-1), "num"), (lambda p: p.generate("abc", steps="10"), "steps"),
    (lambda p: p.generate(123), "prompt"), (lambda p: p.generate("abc", seed="abc"), "seed"),
    (lambda p: p.infill("ab[MASK]", num=0), "num"), (lambda p: p.edit("abcdefgh", span=(5,)), "span"),
    (lambda p: p.score("abc", mc_samples=0), "mc_samples")])
def test_python_api_names_the_bad_argument(cycle_dir, call, name):
    """Bad arguments to the Python API are refused by name before anything reaches torch (issue
    21, item 12): before, negative lengths and num=0 reached torch or gave a misleading message,
    steps="10" and seed="abc" a TypeError deep inside, prompt=123 an AttributeError."""
    pipe = Pipeline.from_pretrained(cycle_dir)
    with pytest.raises(ValueError, match=rf"^{name} must be"):
        call(pipe)
