"""Pictures of a generation: the Story every picture reads (known answers on hand-made traces),
``textdiffusion viz`` writing the player, GIF, strip and plot for a masked, a uniform and a
Gaussian run (with an AR pane), and the forward corruption of ``viz --forward``."""

import json

import numpy as np
import pytest
from commands import in_process
from markov import ALPHABET, tokenizer
from PIL import Image

from textdiffusion.config import Config, ModelConfig, ProcessConfig, TrainConfig
from textdiffusion.runs import load_run
from textdiffusion.sampling.trace import FORMAT, SCHEMA
from textdiffusion.tokenizers import MASK_GLYPH
from textdiffusion.training.trainer import train
from textdiffusion.viz.forward import TIMES, corruptions
from textdiffusion.viz.story import story

M = 9  # the mask id of the hand-made traces


def _trace(frames, process="masked", mask_id=M, prompt_length=1):
    rows = [{"tokens": t, "changed": c, "masked": [p for p, x in enumerate(t) if x == mask_id],
             "decided": [{"position": p, "token": t[p], "confidence": conf, "entropy": 0.1} for p, conf in d]}
            for t, c, d in frames]
    return {"format": FORMAT, "sampler": "remdm", "process": process, "mask_id": mask_id, "rows": 1,
            "length": len(frames[-1][0]), "prompt_length": prompt_length, "texts": ["x"],
            "frames": [{"step": i, "nfe": i + 1, "block": None, "rows": [r]} for i, r in enumerate(rows)]}


def test_a_token_is_decided_at_its_last_change():
    """Position 2 is drawn at step 0, re-masked at step 1 (ReMDM) and drawn again at step 2: it was
    decided at step 2, with step 2's confidence. Catches decided-at as the first change (planted:
    it gives step 0) and a fraction that counts re-masked tokens."""
    s = story(_trace([([1, M, 5, M], [2], [(2, 0.5)]),
                      ([1, M, M, M], [2], []),
                      ([1, 3, 6, M], [1, 2], [(1, 0.9), (2, 0.7)]),
                      ([1, 3, 6, 4], [3], [(3, 0.8)])]), tokenizer())
    assert s.fixed == [True, False, False, False]
    assert s.decided_at == [None, 2, 2, 3]
    assert s.confidence == [None, 0.9, 0.7, 0.8]
    assert s.states[0] == ["fixed", "masked", "noisy", "masked"]  # drawn, but re-masked later
    assert s.states[1] == ["fixed", "masked", "masked", "masked"]
    assert s.states[2] == ["fixed", "new", "new", "masked"]
    assert s.states[3] == ["fixed", "decided", "decided", "new"]
    assert s.fraction == [0.0, 0.0, pytest.approx(2 / 3), 1.0]
    assert s.mean_confidence == [0.5, None, pytest.approx(0.8), 0.8]
    assert s.nfe == [1, 2, 3, 4]


def test_uniform_tokens_that_will_change_are_noisy_and_blocks_are_marked():
    """Uniform process (no masks): a token changed again later is ``noisy`` until its last change.
    Block decoding: the boundary sits before the first position the second block decided."""
    frames = [([0, 4, 5, 6], [1, 2, 3], []), ([0, 4, 7, 6], [2], []), ([0, 2, 7, 6], [1], [])]
    s = story(_trace(frames, process="uniform", mask_id=None), tokenizer())
    assert s.decided_at == [None, 2, 1, 0]
    assert s.states[0] == ["fixed", "noisy", "noisy", "new"]
    assert s.states[1] == ["fixed", "noisy", "new", "decided"]
    assert s.fraction == [pytest.approx(1 / 3), pytest.approx(2 / 3), 1.0]
    # a prior draw that was already the final token never changes: free (not the prompt), decided at step 0
    s = story(_trace([([0, 4, 5, 6], [1, 2], []), ([0, 4, 7, 6], [2], [])], process="uniform", mask_id=None), tokenizer())
    assert s.fixed == [True, False, False, False] and s.decided_at == [None, 0, 1, 0] and s.fraction[-1] == 1.0
    trace = _trace([([1, 3, M, M], [1], [(1, 0.9)]), ([1, 3, 4, M], [2], [(2, 0.6)]), ([1, 3, 4, 5], [3], [(3, 0.7)])])
    for f, block in zip(trace["frames"], (0, 1, 1)):
        f["block"] = block
    assert story(trace, tokenizer()).block_starts == [2]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Briefly trained masked, uniform, Gaussian and AR runs of the cycle (the pictures need not be
    of a good model)."""
    data = np.arange(20_000) % len(ALPHABET)
    out = {}
    for name in ("masked", "uniform", "gaussian", "ar"):
        cfg = Config(model=ModelConfig(n_layer=1, n_head=2, d_model=32, context=24), process=ProcessConfig(name=name),
                     train=TrainConfig(batch_size=32, max_steps=30, lr=3e-3, warmup_steps=5, eval_every=30,
                                       ckpt_every=30, log_every=30))
        out[name] = tmp_path_factory.mktemp(name)
        train(cfg, out[name], {"train": data[:18_000], "val": data[18_000:]}, tokenizer(), progress=False)
    return out


@pytest.mark.parametrize("process", ["masked", "uniform", "gaussian"])
def test_viz_writes_the_player_the_gif_the_strip_and_the_plot(runs, process, tmp_path):
    """``textdiffusion viz RUN PROMPT`` writes player.html (the story of every step embedded, no
    external reference), a GIF with one frame per step, a strip and a plot; with ``--ar`` the AR
    pane's story is in the player. The Gaussian trace reads each step's noisy vectors back as
    tokens (``nearest``: schema-valid, the rounded tokens at the last step)."""
    out = tmp_path / "viz"
    args = ["viz", runs[process], "abc", "--steps", "6", "--length", "8", "--out", out, "--seed", "1"]
    if process == "masked":
        args += ["--ar", runs["ar"]]
    r = in_process(*args)
    assert r.returncode == 0, r.stderr
    page = (out / "player.html").read_text()
    data = json.loads(page.split('<script type="application/json" id="data">')[1].split("</script>")[0])
    assert data["story"]["steps"] == 6 and data["story"]["length"] == 11
    assert (data["ar"] is not None) == (process == "masked")
    if process == "masked":
        assert data["ar"]["steps"] == 8 and data["ar"]["nfe"][-1] == 8  # the prefill, then a call per token but the last
    assert "src=" not in page and "href=\"http" not in page and "url(" not in page  # nothing to fetch
    gif = Image.open(out / "denoise.gif")
    assert gif.n_frames == 6
    for name in ("strip.png", "decided.png"):
        assert Image.open(out / name).size[0] > 300
    trace = json.loads((out / "trace.json").read_text())
    import jsonschema

    jsonschema.validate(trace, SCHEMA)
    last = trace["frames"][-1]["rows"][0]
    if process == "gaussian":
        assert all("nearest" in f["rows"][0] for f in trace["frames"])
        assert last["nearest"] == last["tokens"]
        assert any(f["rows"][0]["nearest"] != f["rows"][0]["tokens"] for f in trace["frames"][:-1])
    else:
        assert "nearest" not in last


def test_viz_refuses_what_it_cannot_draw(runs, tmp_path):
    """A file that is not a trace, an AR pane that is not an AR run, an unknown format: one line each."""
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "other"}')
    for args, needle in ((["--trace", bad, "--model", runs["masked"]], "not a textdiffusion trace"),
                         ([runs["masked"], "abc", "--ar", runs["uniform"]], "give an autoregressive one"),
                         ([runs["masked"], "abc", "--formats", "svg"], "--formats takes")):
        r = in_process("viz", *args, "--out", tmp_path / "o", "--steps", "2", "--length", "2")
        assert r.returncode == 2 and needle in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_viz_draws_a_saved_trace(runs, tmp_path):
    """``generate --trace-out`` then ``viz --trace``: the same story as drawing it directly."""
    trace = tmp_path / "t.json"
    r = in_process("generate", "abc", "--model", runs["masked"], "--steps", "4", "--length", "6", "--trace-out", trace)
    assert r.returncode == 0, r.stderr
    r = in_process("viz", "--trace", trace, "--model", runs["masked"], "--out", tmp_path / "o", "--formats", "html,gif")
    assert r.returncode == 0, r.stderr
    assert Image.open(tmp_path / "o" / "denoise.gif").n_frames == 4 and not (tmp_path / "o" / "strip.png").exists()


@pytest.mark.parametrize("process", ["masked", "uniform", "gaussian"])
def test_the_forward_process_from_clean_text_to_noise(runs, process, tmp_path):
    """t = 0 is the text itself in all three columns; masks only accumulate as t grows (one draw
    of noise for the whole trajectory: planted, fresh noise at every t breaks the nesting) and
    cover everything at t = 1; random replacement and Gaussian noise have replaced most tokens at
    t = 1. With a Gaussian run the column reads its learned embeddings. ``viz --forward`` draws it."""
    run = load_run(runs[process])
    text = "abcdefghabcdefghabcdefgh"
    cols = corruptions(run, text, seed=3)
    pieces = list(text)
    assert all(col[0] == pieces for col in cols.values())
    masks = [{p for p, x in enumerate(row) if x == MASK_GLYPH} for row in cols["masking"]]
    assert all(a <= b for a, b in zip(masks, masks[1:])) and len(masks[-1]) == len(text)
    assert 0 < len(masks[len(TIMES) // 2]) < len(text)
    for name in ("random replacement", "Gaussian noise on embeddings"):
        same = sum(a == b for a, b in zip(cols[name][-1], pieces))
        assert same <= len(text) // 2, (name, cols[name][-1])
    r = in_process("viz", runs[process], "--forward", text, "--out", tmp_path)
    assert r.returncode == 0, r.stderr
    assert Image.open(tmp_path / "forward.png").size[0] > 1000
