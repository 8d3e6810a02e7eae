"""Public diffusion LLMs through our samplers (runs/adapters): tiny random LLaDA and Dream
checkpoints in their real layouts load, give the logits of a reference forward written from the
public modeling code's equations (tests/public_models.py), decode greedily exactly as their
published loops do, and run through generate, infill and the threshold and semi-AR samplers."""

import pytest
import torch
from commands import cli, in_process
from public_models import (
    dream_forward,
    dream_generate,
    llada_forward,
    llada_generate,
    make_dream,
    make_llada,
)

from textdiffusion.control.continuation import continue_prompt
from textdiffusion.models.transformer import Chunk, RowCache, RowStore
from textdiffusion.runs import load_run


@pytest.fixture(scope="module")
def public(tmp_path_factory):
    root = tmp_path_factory.mktemp("public")
    llada, dream = make_llada(root / "llada"), make_dream(root / "dream")
    return {"root": root, "llada": llada, "dream": dream,
            "llada_run": load_run(root / "llada"), "dream_run": load_run(root / "dream")}


IDS = torch.tensor([[5, 9, 14, 3, 22, 40, 7, 7, 31, 12, 50], [8, 2, 2, 2, 19, 44, 1, 6, 58, 13, 27]])


def test_llada_logits_match_its_reference_forward(public):
    """Catches a wrong weight map (q/k/v fused in another order), RoPE theta or half convention,
    key/value groups tiled instead of interleaved (GQA), RMSNorm eps or the untied head."""
    run = public["llada_run"]
    assert run.process.mask_id == 2 and run.tokenizer.mask_id == 2  # <|mdm_mask|> found by name
    with torch.no_grad():
        ours = run.model(IDS)
    ref = llada_forward(public["llada"], IDS)
    assert ours.shape == ref.shape == (2, 11, 72)
    torch.testing.assert_close(ours, ref, atol=5e-5, rtol=1e-5)


def test_dream_logits_are_its_reference_shifted_back(public):
    """Dream's position i predicts token i + 1; our module returns position i's own logits, so
    ours[i] = reference[i - 1] (position 0 keeps its own, as Dream's generate does). Catches a
    missing or doubled shift, the q/k/v biases dropped, or the shards not all read."""
    run = public["dream_run"]
    assert run.model.cfg.logits_shift == 1 and run.process.mask_id == 3
    with torch.no_grad():
        ours = run.model(IDS)
    ref = dream_forward(public["dream"], IDS)
    torch.testing.assert_close(ours[:, 1:], ref[:, :-1], atol=5e-5, rtol=1e-5)
    torch.testing.assert_close(ours[:, 0], ref[:, 0], atol=5e-5, rtol=1e-5)


def test_llada_mask_id_from_its_config(tmp_path):
    """mask_token_id in config.json wins; a tokenizer without <|mdm_mask|> falls back to it."""
    make_llada(tmp_path / "m", mask_in_config=True)
    assert load_run(tmp_path / "m").process.mask_id == 2


@pytest.mark.parametrize("prompt,length,block,steps", [("the cat", 16, 8, 8), ("a bird", 12, 4, 12)])
def test_llada_greedy_semi_ar_is_its_published_loop(public, prompt, length, block, steps):
    """Our semi-AR sampler, greedy, gives LLaDA generate.py's tokens (low-confidence remasking in
    blocks). Catches counts per step other than get_num_transfer_tokens', blocks that see
    confidence beyond their end, or the steps split unevenly."""
    run = public["llada_run"]
    ids = torch.from_numpy(run.tokenizer.encode(prompt))[None]
    want = llada_generate(public["llada"], ids, steps, length, block, mask_id=2)
    res = continue_prompt(run, prompt, length=length, steps=steps, sampler="semi-ar", block_length=block,
                          temperature=0.0)
    assert res[0].tokens[0].tolist() == want[0].tolist()


@pytest.mark.parametrize("sampler,alg", [("entropy", "entropy"), ("confidence", "maskgit_plus")])
def test_dream_greedy_decoding_is_its_published_loop(public, sampler, alg):
    """Our remasking sampler with Dream's reveal count (--schedule dream), greedy, gives Dream's
    _sample tokens (shifted logits, entropy or max-probability order). Catches the shift lost in
    decoding and a count of ceil instead of Dream's floor (which reveals none at some steps)."""
    run = public["dream_run"]
    prompt = "the dog"
    ids = torch.from_numpy(run.tokenizer.encode(prompt))[None]
    want = dream_generate(public["dream"], ids, steps=6, gen_length=14, mask_id=3, alg=alg)
    res = continue_prompt(run, prompt, length=14, steps=6, sampler=sampler, schedule="dream", temperature=0.0)
    assert res[0].tokens[0].tolist() == want[0].tolist()


def test_shifted_logits_through_a_row_cache_equal_the_full_pass(public):
    """A window over stored keys of the same tokens is exact, so its logits must equal the full
    pass's, also at the window's first position, whose shifted logits come from the stored hidden
    state of the position before (catches reading the window's own first state instead)."""
    model = public["dream_run"].model
    x = IDS[:1]
    with torch.no_grad():
        full = model(x)
        store = RowStore()
        model(x, kv_cache=RowCache([store], [Chunk(0, 11, store=-1)], 11, x.device))
        s, n = 4, 5
        window = model(x[:, s : s + n], kv_cache=RowCache([store], [Chunk(s, n, replace=n)], n, x.device))
    torch.testing.assert_close(window[0], full[0, s : s + n], atol=5e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["llada", "dream"])
def test_threshold_above_one_is_semi_ar_and_its_caches_run(public, name):
    """Threshold decoding that never passes its threshold reveals the even share, so without a
    cache it equals semi-AR confidence decoding: no candidate of these random models reaches
    probability 0.9 (catches greedy confidence read from the one-hot filtered distribution, which
    passes any threshold and decodes each block in one call). With the prefix and dual caches it
    runs and fills every position (the caches are approximate, so no known tokens)."""
    run = public[f"{name}_run"]
    semi = continue_prompt(run, "the", length=16, steps=8, sampler="semi-ar", block_length=8, temperature=0.0)
    thr = continue_prompt(run, "the", length=16, steps=8, sampler="threshold", block_length=8, threshold=0.9,
                          kv_cache="none", temperature=0.0)
    assert thr[0].tokens.tolist() == semi[0].tokens.tolist()
    for cache in ("prefix", "dual"):
        out = continue_prompt(run, "the", length=16, steps=8, sampler="threshold", block_length=8, threshold=0.5,
                              kv_cache=cache, temperature=0.0)[0]
        assert not (out.tokens == run.process.mask_id).any() and out.nfe <= 8


@pytest.mark.parametrize("name", ["llada", "dream"])
def test_generate_and_infill_commands_run_a_public_model(public, name):
    """The installed command on the directory: generate (semi-AR and threshold) and infill keep
    the prompt and the text around the hole verbatim and fill the rest."""
    folder = public["root"] / name
    gen = cli("generate", "--model", folder, "the cat", "--length", "12", "--steps", "6", "--sampler", "semi-ar",
              "--block-length", "4", "--temperature", "0")
    assert gen.returncode == 0, gen.stderr
    assert gen.stdout.startswith("the cat") and len(gen.stdout.strip()) > len("the cat")
    thr = in_process("generate", "--model", folder, "the cat", "--length", "12", "--steps", "6", "--sampler",
                     "threshold", "--block-length", "4", "--temperature", "0")
    assert thr.returncode == 0 and thr.stdout.startswith("the cat"), thr.stderr
    fill = in_process("infill", folder, "the [MASK:4] sat on the mat", "--steps", "4", "--temperature", "0")
    assert fill.returncode == 0, fill.stderr
    text = fill.stdout.rstrip("\n")
    assert text.startswith("the ") and text.endswith(" sat on the mat") and len(text) > len("the  sat on the mat")


def test_a_broken_public_directory_gets_a_one_line_error(tmp_path):
    """No tokenizer.json, pickled weights only, an unknown weight name, an unknown model type:
    each a one-line error naming the fix, exit 2 (bad input), no traceback."""
    make_llada(tmp_path / "a")
    (tmp_path / "a" / "tokenizer.json").unlink()
    make_llada(tmp_path / "b")
    (tmp_path / "b" / "model.safetensors").rename(tmp_path / "b" / "pytorch_model.bin")
    make_dream(tmp_path / "c", shards=1)
    from safetensors.torch import load_file, save_file

    w = load_file(tmp_path / "c" / "model.safetensors")
    w["model.layers.0.self_attn.q_norm.weight"] = torch.ones(8)
    save_file(w, tmp_path / "c" / "model.safetensors")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "config.json").write_text('{"model_type": "t5", "architectures": ["T5Model"]}')
    for folder, words in (("a", "no tokenizer.json"), ("b", "pickled"), ("c", "unexpected weight"), ("d", "no adapter")):
        res = in_process("generate", "--model", tmp_path / folder, "the", "--length", "4", "--steps", "2")
        assert res.returncode == 2 and words in res.stderr and "Traceback" not in res.stderr, (folder, res.stderr)
        assert len(res.stderr.strip().splitlines()) == 1, res.stderr


def test_bfloat16_load_keeps_half_the_memory_and_the_answers(public):
    """load_run(dir, dtype="bfloat16"): the weights are bf16 (what an 8B model needs to fit in
    16 GB), the logits come back float32 and close to the float32 load's, with the same argmax at
    nearly every position, and threshold decoding with the dual cache runs. Would catch: the
    dtype ignored (float32 weights), or probabilities computed in bf16."""
    folder = public["root"] / "llada"
    full, half = load_run(folder), load_run(folder, dtype="bfloat16")
    assert {p.dtype for p in half.model.parameters()} == {torch.bfloat16}
    with torch.no_grad():
        a, b = full.model(IDS, torch.ones(2)), half.model(IDS, torch.ones(2))
    assert b.dtype == torch.float32
    assert float((a - b).abs().max()) < 0.08 * float(a.abs().max())
    assert float((a.argmax(-1) == b.argmax(-1)).double().mean()) >= 0.9
    out = continue_prompt(half, "the cat", length=16, steps=8, sampler="threshold", block_length=8, kv_cache="dual",
                          temperature=0.0)[0]
    assert not (out.tokens == half.process.mask_id).any()
