"""Trace format v1 (docs/trace-format.md): every sampler's per-step record validates against the
schema, ends on the generated tokens, decides every free position, and reports the confidence
the step's own distribution gave each decided token."""

import json
import subprocess
import sys

import jsonschema
import pytest
import torch
from markov import tokenizer

from textdiffusion.config import Config, ModelConfig, ProcessConfig
from textdiffusion.runs import build_model
from textdiffusion.sampling import build_sampler
from textdiffusion.sampling.filters import ban
from textdiffusion.sampling.trace import SCHEMA, TraceRecorder


def _model(process, time_cond=False):
    cfg = Config(model=ModelConfig(n_layer=2, n_head=2, d_model=32, context=24, time_cond=time_cond),
                 process=ProcessConfig(name=process, block_size=4))
    cfg.model.vocab_size = tokenizer().vocab_size
    torch.manual_seed(0)
    model, process = build_model(cfg, tokenizer())
    with torch.no_grad():  # confident predictions, so confidences are far from uniform
        for p in model.parameters():
            p.mul_(3.0)
    return model.eval(), process


@pytest.mark.parametrize("process, name, options", [
    ("masked", "ancestral", {}), ("masked", "confidence", {}), ("masked", "remdm", {"eta": 0.2}),
    ("masked", "threshold", {"block_length": 4}), ("block", "block", {}), ("uniform", "euler", {}),
    ("gaussian", "ddpm", {}), ("ar", "ar", {})])
def test_every_sampler_writes_a_valid_trace_ending_on_its_tokens(process, name, options):
    """The record validates against the schema, its last frame is the generation's tokens, NFE
    never decreases and ends at the generation's, confidences are probabilities, and (masked
    models, no re-masking) every free position is decided exactly once, never a mask."""
    model, proc = _model(process, process in ("uniform", "gaussian"))
    sampler = build_sampler(name, proc, tokenizer(), **options)
    rec = TraceRecorder(proc.mask_id)
    out = sampler.generate(model, proc, length=12, steps=12, batch_size=2, prompt=torch.tensor([0, 1, 2]),
                           gen=torch.Generator().manual_seed(0), on_step=rec)
    data = rec.to_dict(texts=["x", "y"], sampler=name, process=process, prompt_length=3, steps=12, seed=0)
    jsonschema.validate(json.loads(json.dumps(data)), SCHEMA)
    assert [row["tokens"] for row in data["frames"][-1]["rows"]] == out.tokens.tolist()
    nfe = [f["nfe"] for f in data["frames"]]
    assert nfe == sorted(nfe) and nfe[-1] == out.nfe
    decided = [d for f in data["frames"] for r in f["rows"] for d in r["decided"]]
    assert decided and all(d["confidence"] is None or 0 <= d["confidence"] <= 1 for d in decided)
    if process in ("masked", "block") and name != "remdm":
        for b in range(2):
            positions = sorted(d["position"] for f in data["frames"] for d in f["rows"][b]["decided"])
            assert positions == list(range(3, 15)), (b, positions)
        assert all(d["confidence"] is not None for d in decided)


def test_confidence_is_the_probability_the_step_gave_the_token():
    """Known answer: for the confidence sampler, a token decided at step i has the probability
    the network's distribution on the previous frame's tokens gives it, recomputed here. Catches
    the confidence read at the wrong position or from the wrong step's distribution (each
    planted and seen failing), and the most likely token's probability reported instead of the drawn one's."""
    model, proc = _model("masked")
    sampler = build_sampler("confidence", proc, tokenizer(), temperature=1.0)
    rec = TraceRecorder(proc.mask_id)
    sampler.generate(model, proc, length=12, steps=6, batch_size=2, gen=torch.Generator().manual_seed(3), on_step=rec)
    prev = torch.full((2, 12), proc.mask_id)
    checked = 0
    with torch.no_grad():
        for frame in rec.frames:
            log_p = proc.log_probs(ban(model(prev, None), sampler.banned_ids))
            for b, row in enumerate(frame["rows"]):
                for d in row["decided"]:
                    expected = float(log_p[b, d["position"], d["token"]].exp())
                    assert d["confidence"] == pytest.approx(expected, abs=1e-5), (frame["step"], d)
                    p = log_p[b, d["position"]].exp()
                    assert d["entropy"] == pytest.approx(float(-(p * p.clamp_min(1e-30).log()).sum()), abs=1e-4)
                    checked += 1
            prev = torch.tensor([row["tokens"] for row in frame["rows"]])
    assert checked == 24


def test_generate_trace_out_writes_the_documented_format(tmp_path):
    """The acceptance command: `textdiffusion generate "The meaning of life" --trace-out t.json`
    on the shipped model writes a trace that validates against the documented schema."""
    path = tmp_path / "t.json"
    r = subprocess.run([sys.executable, "-m", "textdiffusion", "generate", "The meaning of life", "--trace-out",
                        str(path)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    data = json.loads(path.read_text())
    jsonschema.validate(data, SCHEMA)
    assert data["format"] == "textdiffusion.trace/1" and data["texts"] == [r.stdout[:-1]]  # print adds one newline
    first, last = data["frames"][0]["rows"][0], data["frames"][-1]["rows"][0]
    assert len(first["masked"]) > len(last["masked"]) == 0 and data["prompt_length"] > 0
