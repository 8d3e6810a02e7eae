"""transformers interop (textdiffusion/hf.py): our models saved for transformers load with its
Auto classes (whichever of the two packages is imported first) and give our module's logits,
their tokenizer gives our ids, and every command reads the directory back."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from commands import cli, in_process

from textdiffusion.config import Config, ModelConfig, ProcessConfig, TrainConfig
from textdiffusion.tokenizers import HFTokenizer, to_hf_json, train_tokenizer
from textdiffusion.training.trainer import train

TEXTS = ["the cat sat on the mat. the dog ran to the cat!", "a bird sang; the sun rose over the hill.\n",
         "one two three, four five: six seven eight nine ten."] * 30
SAMPLES = ["the cat", "a bird sang over the mat", "Zebra!"]  # "Z" is unseen: the char tokenizer's unknown


def _run(path, process, kind):
    tok = train_tokenizer(kind, TEXTS, vocab_size=300)
    data = tok.encode_documents(TEXTS)
    cfg = Config(model=ModelConfig(n_layer=2, n_head=2, d_model=32, context=32), process=ProcessConfig(name=process),
                 train=TrainConfig(batch_size=8, max_steps=8, lr=3e-3, warmup_steps=2, eval_every=8, ckpt_every=8,
                                   log_every=8, eval_batches=1))
    train(cfg, path, {"train": data[: len(data) * 9 // 10], "val": data[len(data) * 9 // 10 :]}, tok, progress=False)
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    out = {"masked": _run(root / "masked", "masked", "char"), "ar": _run(root / "ar", "ar", "bpe"),
           "gaussian": _run(root / "gaussian", "gaussian", "byte")}
    for name in out.copy():
        r = cli("export", out[name], "--out", root / f"{name}-hf", "--format", "transformers", "--dtype", "float32")
        assert r.returncode == 0, r.stderr
        out[f"{name}-hf"] = root / f"{name}-hf"
    return out


@pytest.mark.parametrize("kind", ["char", "byte", "bpe"])
def test_our_tokenizers_as_hf_tokenizer_json_give_our_ids(kind):
    """to_hf_json renumbers BPE (HF keeps our specials first; we keep them last) and spells char
    and byte tokenizers as HF models: same ids, same text back, same bytes per token. Catches the
    BPE ids left unshifted or the specials in HF's order."""
    tok = train_tokenizer(kind, TEXTS, vocab_size=300)
    hf = HFTokenizer(to_hf_json(tok), {"eot": tok.eot_id, "mask": tok.mask_id, "pad": tok.pad_id, "unk": tok.unk_id},
                     tok.vocab_size)
    for text in SAMPLES + TEXTS[:3]:
        assert hf.encode(text).tolist() == tok.encode(text).tolist()
        assert hf.decode(hf.encode(text)) == tok.decode(tok.encode(text))
    assert np.array_equal(hf.encode_documents(TEXTS[:3]), tok.encode_documents(TEXTS[:3]))
    assert np.array_equal(hf.token_bytes(), tok.token_bytes())
    assert hf.unknown_characters("the <|mask|>")[-1] == "<|mask|>"  # a literal special token is refused


CHECK = textwrap.dedent("""
    import json, sys, torch
    first, folder, run, auto = sys.argv[1:5]
    if first == "transformers":
        import transformers, textdiffusion
    else:
        import textdiffusion, transformers
    from textdiffusion.runs import load_run
    model = getattr(transformers, auto).from_pretrained(folder).eval()
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    ours = load_run(run)
    texts = json.loads(sys.argv[5])
    out = {"class": type(model).__name__, "ids": [], "diff": 0.0}
    batch = tok(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = model(**batch).logits
        for i, text in enumerate(texts):
            ids = ours.tokenizer.encode(text).tolist()
            out["ids"].append(tok(text)["input_ids"] == ids)
            mine = ours.model(torch.tensor([ids]))
            out["diff"] = max(out["diff"], float((logits[i, : len(ids)] - mine[0]).abs().max()))
    print(json.dumps(out))
""")


@pytest.mark.parametrize("name,first,auto", [("masked", "transformers", "AutoModelForMaskedLM"),
                                             ("ar", "textdiffusion", "AutoModelForCausalLM")])
def test_transformers_auto_classes_load_an_export_with_identical_logits(runs, name, first, auto):
    """In a fresh interpreter importing transformers first (masked run) or textdiffusion first
    (AR run), the Auto classes load the export; its tokenizer gives our ids and a padded batch
    gives our module's logits on each unpadded text. Catches registration that only works in one
    import order, an attention_mask ignored (padding attended), or the AR model's padded batch
    losing its causal mask."""
    res = subprocess.run([sys.executable, "-c", CHECK, first, runs[f"{name}-hf"], runs[name], auto,
                          json.dumps(SAMPLES[:2] + ["one two three"])], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["class"] == "TextDiffusionModel" and all(out["ids"])
    assert out["diff"] < 1e-5, out


def test_an_export_reads_back_into_every_command(runs):
    """generate from the export gives the run's own text under the same seed (masked, AR and the
    Gaussian process), and the export's config.json carries the whole config and the card."""
    for name in ("masked", "ar", "gaussian"):
        a = in_process("generate", "--model", runs[name], "the cat", "--length", "12", "--steps", "6", "--seed", "3")
        b = in_process("generate", "--model", runs[f"{name}-hf"], "the cat", "--length", "12", "--steps", "6",
                       "--seed", "3")
        assert a.returncode == 0 and b.returncode == 0, (a.stderr, b.stderr)
        assert a.stdout == b.stdout and a.stdout.startswith("the cat"), name
    raw = json.loads((runs["masked-hf"] / "config.json").read_text())
    assert raw["model_type"] == "textdiffusion" and raw["textdiffusion"]["process"]["name"] == "masked"
    assert Config.from_dict(raw["textdiffusion"]).model == Config.load(runs["masked"] / "config.json").model
    assert {"tokenizer.json", "tokenizer_config.json", "model.safetensors"} <= {p.name for p in runs["masked-hf"].iterdir()}


BF16_CHECK = textwrap.dedent("""
    import sys, torch, textdiffusion, transformers
    from textdiffusion.runs import load_run
    folder = sys.argv[1]
    model = transformers.AutoModelForMaskedLM.from_pretrained(folder).eval()
    ours = load_run(folder, dtype="bfloat16")
    ids = torch.tensor([ours.tokenizer.encode("ROMEO: O, she doth teach the torches").tolist()])
    ids[0, 3::2] = ours.tokenizer.mask_id
    t = torch.tensor([0.6])
    with torch.no_grad():
        a, b = model(input_ids=ids, t=t).logits, ours.model(ids, t)
    print(model.dtype, next(ours.model.parameters()).dtype, float((a - b).abs().max()))
""")


def test_a_bf16_time_conditioned_export_runs_in_transformers(tmp_path):
    """The shipped English model (time-conditioned, bf16) exported as is: transformers loads the
    bf16 weights and, at a given t, gives the logits of our own bf16 load of the same directory.
    Would catch: t's sinusoidal features left in float32 against a bf16 time MLP (a dtype
    error), or t ignored by the transformers forward."""
    assert cli("export", "english", "--out", tmp_path / "e", "--format", "transformers").returncode == 0
    res = subprocess.run([sys.executable, "-c", BF16_CHECK, tmp_path / "e"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    theirs, mine, diff = res.stdout.split()
    assert theirs == mine == "torch.bfloat16" and float(diff) < 1e-5
