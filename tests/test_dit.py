"""MDLM's, BD3-LM's and SEDD's released checkpoints (runs/adapters/mdlm.py, bd3lm.py, sedd.py) on our Transformer:
tiny random ones in their release layouts give the outputs of a reference forward written from
their DiT code (tests/public_dit.py), sample by their rule, and run through the commands."""

import json
import math

import pytest
import torch
from commands import in_process
from public_dit import block_causal, make_bd3lm, make_mdlm, make_sedd, mdlm_forward, sedd_forward

from textdiffusion.control.continuation import continue_prompt
from textdiffusion.runs import load_run


@pytest.fixture(scope="module")
def mdlm(tmp_path_factory):
    root = tmp_path_factory.mktemp("mdlm")
    model = make_mdlm(root / "mdlm")
    return {"root": root, "model": model, "run": load_run(root / "mdlm")}


def test_mdlm_logits_match_its_reference_forward(mdlm):
    """Our module with MDLM's weights gives DIT.forward's logits (sigma = 0, as the released
    models run), on a batch with masked positions, whatever t our samplers pass. Would catch: the
    x1000 of our own time features kept (sigma 0 hides it, so t = 0.7 is passed too), adaLN
    chunks read in another order, the final adaLN or the head bias dropped, LayerNorm with a
    bias, the MLP biases lost."""
    run, model = mdlm["run"], mdlm["model"]
    mask = model["mask_id"]
    ids = torch.tensor([[5, 9, 14, mask, 22, 40, 7, mask, 31, 12], [mask, mask, 25, 11, 19, 44, 10, 6, 38, 13]])
    want = mdlm_forward(model, ids)
    with torch.no_grad():
        for t in (torch.ones(2), torch.full((2,), 0.7)):
            got = run.model(ids, t)
            assert torch.allclose(got, want, atol=1e-4, rtol=1e-4), float((got - want).abs().max())
    assert run.process.mask_id == mask and run.tokenizer.mask_id == mask


def test_mdlm_time_features_match_when_sigma_is_not_zero(tmp_path):
    """The sigma embedding itself (no x1000): with time_input 't', our time features of sigma
    equal DIT's TimestepEmbedder of sigma. Would catch: a scale other than 1, [sin, cos] order."""
    model = make_mdlm(tmp_path / "m")
    run = load_run(tmp_path / "m")
    run.model.cfg.time_input = "t"
    ids = torch.tensor([[3, 4, 5, model["mask_id"], 7, 8]])
    sigma = torch.tensor([0.37])
    with torch.no_grad():
        got = run.model(ids, sigma)
    assert torch.allclose(got, mdlm_forward(model, ids, sigma), atol=1e-4, rtol=1e-4)


def test_mdlm_samples_by_its_rule(mdlm):
    """MDLM's DDPM update in one step from t = 1 to 0 draws each masked token from
    softmax(logits) with [MASK] excluded (q_xs = p_x0 (move_t - move_s), move_s = 0): our
    ancestral sampler's 3000 draws of one token after a prompt match that distribution within
    0.06 total variation (sampling noise is about 0.03 here). Would catch: the mask token
    drawable, a temperature or top-k applied by default, the prompt not seen."""
    run, model = mdlm["run"], mdlm["model"]
    prompt = "the cat sat"
    ids = torch.from_numpy(run.tokenizer.encode(prompt))
    out = continue_prompt(run, prompt, length=1, steps=1, sampler="ancestral", num=3000, seed=0)[0]
    drawn = out.tokens[:, -1]
    logits = mdlm_forward(model, torch.cat([ids, torch.tensor([model["mask_id"]])])[None])[0, -1]
    logits[model["mask_id"]] = float("-inf")
    p = torch.softmax(logits.double(), -1)
    freq = torch.bincount(drawn, minlength=p.numel()).double() / drawn.numel()
    assert float(0.5 * (freq - p).abs().sum()) < 0.06 and int(freq[model["mask_id"]]) == 0
    assert run.process.unmask_probability(1.0, 0.5) == pytest.approx(0.5)  # MDLM: (move_t - move_s) / move_t


def test_mdlm_runs_generate_infill_and_the_block_samplers(mdlm):
    """The commands on the directory: generate (ancestral, semi-AR, threshold with the dual cache)
    and infill keep the prompt and the text around the hole verbatim and fill the rest."""
    folder = mdlm["root"] / "mdlm"
    for extra in ([], ["--sampler", "semi-ar", "--block-length", "4", "--temperature", "0"],
                  ["--sampler", "threshold", "--block-length", "4", "--kv-cache", "dual"]):
        r = in_process("generate", "--model", folder, "the cat", "--length", "12", "--steps", "6", *extra)
        assert r.returncode == 0 and r.stdout.startswith("the cat") and len(r.stdout.strip()) > 7, r.stderr
    fill = in_process("infill", folder, "the [MASK:4] sat on the mat", "--steps", "4", "--json")
    assert fill.returncode == 0, fill.stderr
    text = json.loads(fill.stdout)["texts"][0]
    assert text.startswith("the ") and text.endswith(" sat on the mat")


def test_mdlm_with_time_conditioning_is_one_line(tmp_path):
    """A time-conditioned MDLM (its sigma comes from its schedule) is refused in one line, exit 2."""
    make_mdlm(tmp_path / "m", time_conditioning=True)
    r = in_process("generate", "--model", tmp_path / "m", "the")
    assert r.returncode == 2 and "time_conditioning is not supported yet" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def sedd(tmp_path_factory):
    root = tmp_path_factory.mktemp("sedd")
    model = make_sedd(root / "sedd")
    return {"root": root, "model": model, "run": load_run(root / "sedd")}


def test_sedd_log_score_matches_its_reference_forward(sedd):
    """At our time t (the mask rate), the network sees SEDD's sigma = -log(1 - t), and the log
    score our sedd-absorb process reads off the raw output (plus log r = -log(e^sigma - 1), minus
    log(V - 1)) is SEDD.forward's output, at every entry but each position's own token (which
    SEDD sets to 0). Would catch: t passed as sigma, sigma not capped as SEDD's at t = 1, the
    mask not at id ``tokens``, the process not sedd-absorb."""
    run, model = sedd["run"], sedd["model"]
    assert run.process.name == "sedd-absorb" and run.process.mask_id == model["mask_id"] == run.tokenizer.mask_id
    mask = model["mask_id"]
    ids = torch.tensor([[5, mask, 14, mask, 22, 40, 7, mask], [mask, mask, 25, 11, 19, mask, 10, 6]])
    t = torch.tensor([0.3, 1.0])  # at t = 1, SEDD's own sigma(1) = -log(1e-3)
    sigma = -torch.log1p(-t.clamp(max=1 - 1e-3))
    want = sedd_forward(model, ids, sigma)
    with torch.no_grad():
        raw = run.model(ids, t)
    log_score = raw - torch.log(torch.expm1(sigma))[:, None, None] - math.log(model["vocab_size"] - 1)
    own = torch.zeros_like(want, dtype=torch.bool).scatter(-1, ids[..., None], True)
    assert torch.allclose(log_score[~own], want[~own], atol=1e-4, rtol=1e-4)
    assert torch.allclose(raw, mdlm_forward(model, ids, sigma), atol=1e-4, rtol=1e-4)


def test_sedd_samples_by_its_rule_and_runs_the_commands(sedd):
    """SEDD's analytic predictor for the absorbing graph, in one step from t = 1 to 0, draws a
    masked token with probability proportional to its score (the mask excluded): our ancestral
    sampler's 3000 draws match softmax of the reference output at sigma(1) within 0.06 total
    variation. Then generate (ancestral, semi-AR, threshold with the dual cache: SEDD's absorbing
    scores normalise to p(x0 | x_t), all the remasking samplers need) and infill run on it."""
    run, model = sedd["run"], sedd["model"]
    prompt = "the cat sat"
    ids = torch.from_numpy(run.tokenizer.encode(prompt))
    out = continue_prompt(run, prompt, length=1, steps=1, sampler="ancestral", num=3000, seed=0)[0]
    drawn = out.tokens[:, -1]
    x = torch.cat([ids, torch.tensor([model["mask_id"]])])[None]
    score = sedd_forward(model, x, torch.tensor([-math.log(1e-3)]))[0, -1]
    score[model["mask_id"]] = float("-inf")
    p = torch.softmax(score.double(), -1)
    freq = torch.bincount(drawn, minlength=p.numel()).double() / drawn.numel()
    assert float(0.5 * (freq - p).abs().sum()) < 0.06 and int(freq[model["mask_id"]]) == 0
    folder = sedd["root"] / "sedd"
    for extra in ([], ["--sampler", "semi-ar", "--block-length", "4", "--temperature", "0"],
                  ["--sampler", "threshold", "--block-length", "4", "--kv-cache", "dual"]):
        r = in_process("generate", "--model", folder, "the cat", "--length", "12", "--steps", "6", *extra)
        assert r.returncode == 0 and r.stdout.startswith("the cat") and len(r.stdout.strip()) > 7, r.stderr
    fill = in_process("infill", folder, "the [MASK:4] sat on the mat", "--steps", "4", "--json")
    assert fill.returncode == 0 and json.loads(fill.stdout)["texts"][0].endswith(" sat on the mat"), fill.stderr


@pytest.mark.parametrize("change,message", [({"graph": "uniform"}, "the 'uniform' graph is not supported yet"),
                                            ({"noise": "geometric"}, "'geometric' noise is not supported")])
def test_unsupported_sedd_variants_are_one_line(tmp_path, change, message):
    make_sedd(tmp_path / "s", **change)
    r = in_process("generate", "--model", tmp_path / "s", "the")
    assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_a_dit_without_tokenizer_says_to_save_gpt2s(tmp_path):
    """MDLM and SEDD releases ship no tokenizer: the error names GPT-2's and how to save it."""
    make_mdlm(tmp_path / "m")
    (tmp_path / "m" / "tokenizer.json").unlink()
    r = in_process("generate", "--model", tmp_path / "m", "the")
    assert r.returncode == 2 and "MDLM uses GPT-2's" in r.stderr and "from_pretrained('gpt2')" in r.stderr


@pytest.mark.parametrize("adaln", [True, False])
def test_bd3lm_logits_match_its_reference_forward_with_the_block_mask(tmp_path, adaln):
    """A BD3-LM (blocks of 4) loads as our block process; with BD3-LM's sampling mask (a block
    sees itself and the blocks before it) our module gives the reference DiT's logits, with or
    without adaLN. Would catch: the block size not read from config.json (16 by default), the
    adaLN-free variant loading the adaLN layers, full attention where the mask applies."""
    model = make_bd3lm(tmp_path / "b", adaln=adaln)
    run = load_run(tmp_path / "b")
    assert run.process.name == "block" and run.process.block_size == 4 and run.process.mask_id == model["mask_id"]
    mask_id = model["mask_id"]
    ids = torch.tensor([[5, 9, 14, 3, 22, mask_id, 7, mask_id, mask_id, mask_id, 31, 12]])
    mask = block_causal(ids.shape[1], 4)
    want = mdlm_forward(model, ids, mask=mask)
    with torch.no_grad():
        got = run.model(ids, torch.ones(1), attn_mask=mask)
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-4), float((got - want).abs().max())
    assert not torch.allclose(mdlm_forward(model, ids), want, atol=1e-2)  # the mask matters here


def test_bd3lm_samples_by_its_rule_and_runs_the_commands(tmp_path):
    """BD3-LM's semi-AR sampler draws a block's masked token from softmax(logits) (the mask
    excluded) given the clean blocks before it: our block sampler's 3000 one-step draws of the
    token after a prompt match the reference within 0.06 total variation; generate (the card's
    block sampler, with its exact KV cache) runs on the directory."""
    model = make_bd3lm(tmp_path / "b")
    run = load_run(tmp_path / "b")
    prompt = "the cat sat"
    ids = torch.from_numpy(run.tokenizer.encode(prompt))
    out = continue_prompt(run, prompt, length=1, steps=1, sampler="block", num=3000, seed=0)[0]
    drawn = out.tokens[:, -1]
    x = torch.cat([ids, torch.tensor([model["mask_id"]])])[None]
    logits = mdlm_forward(model, x, mask=block_causal(x.shape[1], 4))[0, -1]
    logits[model["mask_id"]] = float("-inf")
    p = torch.softmax(logits.double(), -1)
    freq = torch.bincount(drawn, minlength=p.numel()).double() / drawn.numel()
    assert float(0.5 * (freq - p).abs().sum()) < 0.06 and int(freq[model["mask_id"]]) == 0
    r = in_process("generate", "--model", tmp_path / "b", "the cat", "--length", "12", "--steps", "12")
    assert r.returncode == 0 and r.stdout.startswith("the cat") and len(r.stdout.strip()) > 7, r.stderr


def test_bd3lm_threshold_decoding_inside_blocks(tmp_path):
    """Fast-dLLM's rule inside BD3-LM's blocks (`--sampler block --order confidence --threshold`):
    a threshold no candidate reaches (above 1) reveals the even share, so it equals plain
    confidence order; a low one reveals several tokens a call (fewer calls) and fills every
    position. Would catch: the threshold ignored (as many calls), or read as a share."""
    make_bd3lm(tmp_path / "b")
    run = load_run(tmp_path / "b")
    plain = continue_prompt(run, "the cat", length=16, steps=16, sampler="block", order="confidence",
                            temperature=0.0)[0]
    high = continue_prompt(run, "the cat", length=16, steps=16, sampler="block", order="confidence",
                           threshold=1.5, temperature=0.0)[0]
    low = continue_prompt(run, "the cat", length=16, steps=16, sampler="block", order="confidence",
                          threshold=0.3, temperature=0.0)[0]
    assert high.tokens.tolist() == plain.tokens.tolist() and high.nfe == plain.nfe
    assert low.nfe < plain.nfe and not (low.tokens == run.process.mask_id).any()
    r = in_process("generate", "--model", tmp_path / "b", "the", "--sampler", "block", "--threshold", "0.5")
    assert r.returncode == 2 and "--order confidence" in r.stderr


def test_mdlm_ancestral_steps_that_change_nothing_cost_no_call(mdlm):
    """MDLM's network sees sigma = 0 whatever t is, so a step that reveals nothing reuses the last
    prediction, as MDLM's own ddpm_cache loop does: 8 tokens in 32 steps take at most 9 calls.
    Would catch: its adaLN structure taken for time dependence (32 calls)."""
    out = continue_prompt(mdlm["run"], "the", length=8, steps=32, sampler="ancestral", seed=0)[0]
    assert out.nfe <= 9 and not (out.tokens == mdlm["run"].process.mask_id).any()
