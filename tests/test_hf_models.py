"""Any transformers masked LM as a diffusion denoiser and any causal LM as an AR model
(runs/adapters/hf_masked.py, hf_causal.py): tiny models made by transformers itself, saved with
save_pretrained, give their own forward's logits through our loaders, and decode through our
samplers (AR greedy = transformers' own greedy generate)."""

import pytest
import torch
import transformers  # the hf extra; dev installs it
from commands import in_process
from public_models import CORPUS, tiny_tokenizer
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from textdiffusion.control.continuation import continue_prompt
from textdiffusion.runs import load_run

IDS = torch.tensor([[7, 9, 14, 3, 22, 40, 7, 7, 31, 12], [8, 12, 25, 11, 19, 44, 10, 6, 38, 13]])


def _wordpiece() -> str:
    hf = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    hf.normalizer = normalizers.BertNormalizer(lowercase=True)
    hf.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    hf.decoder = decoders.WordPiece()
    hf.train_from_iterator(CORPUS, trainers.WordPieceTrainer(vocab_size=60, show_progress=False,
                                                             special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]))
    return hf.to_str()


def _save_tokenizer(folder, rust_json, **named):
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(rust_json), **named)
    tok.save_pretrained(folder)


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("hfmodels")
    torch.manual_seed(0)
    made = {}
    bert = transformers.BertForMaskedLM(transformers.BertConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=64, pad_token_id=0, sep_token_id=3)).eval()
    bert.save_pretrained(root / "bert")
    _save_tokenizer(root / "bert", _wordpiece(), unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]",
                    cls_token="[CLS]", mask_token="[MASK]")
    made["bert"] = bert
    bpe = tiny_tokenizer(["<|endoftext|>"])
    small = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=48, max_position_embeddings=128, eos_token_id=0, bos_token_id=0)
    for name, model in (("gpt2", transformers.GPT2LMHeadModel(transformers.GPT2Config(
                            vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=128, eos_token_id=0,
                            bos_token_id=0))),
                        # not a layout our Transformer loads: it runs through transformers itself
                        ("gptneo", transformers.GPTNeoForCausalLM(transformers.GPTNeoConfig(
                            vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
                            attention_types=[[["global"], 2]], max_position_embeddings=128, eos_token_id=0,
                            bos_token_id=0))),
                        ("llama", transformers.LlamaForCausalLM(transformers.LlamaConfig(**small, rope_theta=10000.0))),
                        ("qwen2", transformers.Qwen2ForCausalLM(transformers.Qwen2Config(
                            **small, rope_theta=1e6, tie_word_embeddings=True))),
                        # every embedding row a token of the tokenizer's (no spare row for a mask: conversion adds one)
                        ("llama-full", transformers.LlamaForCausalLM(transformers.LlamaConfig(
                            **dict(small, vocab_size=Tokenizer.from_str(bpe).get_vocab_size()), rope_theta=10000.0)))):
        with torch.no_grad():  # transformers' init is tiny (std 0.02): spread the logits so greedy is not a tie
            for p in model.parameters():
                p.mul_(12.0 if p.dim() > 1 else 1.0)
        model.eval().save_pretrained(root / name)
        _save_tokenizer(root / name, bpe, eos_token="<|endoftext|>")
        made[name] = model
    return root, made


@pytest.mark.parametrize("name", ["bert", "gptneo", "gpt2", "llama", "qwen2"])
def test_a_transformers_model_gives_its_own_logits_through_our_loader(hf_dirs, name):
    """BERT and GPT-Neo run through transformers; GPT-2 (learned positions, Conv1D weights,
    biases everywhere, tied head), LLaMA and Qwen2 (tied head, GQA, q/k/v biases) load natively
    into our Transformer, so this compares two implementations: catches a wrong weight map, RoPE
    theta, the tied head left random, or biases dropped; for GPT-2 (each planted, seen failing)
    the Conv1D weights not transposed, the positions not added, the output projection's bias
    dropped."""
    root, made = hf_dirs
    run = load_run(root / name)
    with torch.no_grad():
        want = made[name](input_ids=IDS).logits
        got = run.model(IDS)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert run.process.name == ("masked" if name == "bert" else "ar")
    if name == "bert":
        assert run.process.mask_id == 4 and run.tokenizer.eot_id == 3  # [MASK], [SEP]


@pytest.mark.parametrize("name", ["gptneo", "gpt2", "llama"])
def test_ar_greedy_decoding_is_transformers_generate(hf_dirs, name):
    """Our AR sampler on a transformers causal LM, greedy, writes the tokens of transformers'
    own generate(do_sample=False): GPT-Neo through its history-carrying cache, GPT-2 and LLaMA
    natively with our KV cache. Catches the history dropped between calls or positions
    restarting per call (GPT-2: learned positions indexed from 0 in every cached call)."""
    root, made = hf_dirs
    run = load_run(root / name)
    ids = torch.from_numpy(run.tokenizer.encode("the cat"))[None]
    want = made[name].generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=10, do_sample=False,
                               min_new_tokens=10, pad_token_id=0)
    gen, texts, _ = continue_prompt(run, "the cat", length=10, sampler="ar", temperature=0.0)
    assert gen.tokens[0].tolist() == want[0].tolist()


@pytest.mark.parametrize("name", ["gptneo", "gpt2"])
def test_rows_of_other_lengths_decode_as_alone(hf_dirs, name):
    """Two requests of different prompt lengths joined in one batch (a left-padded cache, as the
    server batches them) decode what each decodes alone, through transformers (GPT-Neo) and
    natively with learned positions (GPT-2): the padding is masked and each row's positions are
    its own (GPT-2: catches the position table read at the padded column)."""
    from textdiffusion.sampling import build_sampler
    from textdiffusion.sampling.base import Plan, prompt_canvas

    root, _ = hf_dirs
    run = load_run(root / name)
    smp = build_sampler("ar", run.process, run.tokenizer, temperature=0.0)
    alone, plans = [], []
    for text in ("the cat sat", "a"):
        ids = torch.from_numpy(run.tokenizer.encode(text))
        plan = Plan(smp, run.model, run.process, prompt_canvas(ids, 1, 6, "cpu"), 6, torch.Generator().manual_seed(0))
        alone.append(plan.generate().tokens[0].tolist())
        plans.append(plan)
    state = plans[0].start()
    state.join(plans[1].start())
    while not state.finished:
        smp.step(state, run.model)
    rows = [r.tokens.tolist() for r in state.rows]
    assert rows == alone


def test_bert_runs_generate_and_infill(hf_dirs):
    """A masked LM through our masked samplers: generate keeps the prompt, infill keeps the text
    around the hole (BERT's tokenizer lowercases, so the test text is lowercase)."""
    root, _ = hf_dirs
    gen = in_process("generate", "--model", root / "bert", "the cat", "--length", "6", "--steps", "3",
                     "--sampler", "semi-ar", "--block-length", "3")
    assert gen.returncode == 0 and gen.stdout.startswith("the cat"), gen.stderr
    fill = in_process("infill", root / "bert", "the cat [MASK:3] the mat.", "--steps", "3")
    assert fill.returncode == 0, fill.stderr
    assert fill.stdout.startswith("the cat") and fill.stdout.rstrip().endswith("the mat.")


@pytest.mark.parametrize("name", ["llama", "qwen2", "llama-full", "gpt2"])
def test_a_causal_lm_converted_starts_as_itself_under_the_shift(hf_dirs, name):
    """``train --init HF_DIR --process masked``'s starting model: transformers' LLaMA (untied head,
    a spare embedding row), Qwen2 (tied head), a LLaMA whose every row is a token (one row
    added) and GPT-2 (learned positions: its table cut to the window) become our masked model with the logits shift; at annealing step 0 (causal) position
    i gives transformers' own logits at i - 1 (to 1e-4); the mask token is a new id (not
    end-of-text, not a text token) whose input embedding is zero (a blank input). Catches (each
    planted, seen failing): the mask on end-of-text as the causal LM loader has it, the grown
    head misaligned (rows prepended), the shift dropped, the spare row kept as stored."""
    from textdiffusion.config import Config, ProcessConfig
    from textdiffusion.runs import build_model
    from textdiffusion.training.adapt import Annealed, annealed_mask, load_init, read_init
    from textdiffusion.training.recipe import finetune_config

    root, made = hf_dirs
    hf = made[name]
    cfg = finetune_config(Config(process=ProcessConfig(name="masked")), root / name)
    _, tok = read_init(root / name, cfg.model.context)
    rows = hf.config.vocab_size
    assert cfg.process.name == "masked" and cfg.model.logits_shift == 1 and cfg.model.context == 128
    assert tok.mask_id == tok.base_size and tok.mask_id != tok.eot_id
    assert cfg.model.vocab_size == tok.vocab_size == max(rows, tok.base_size + 1)
    model, _ = build_model(cfg, tok)
    load_init(model, root / name, tok)
    with torch.no_grad():
        want = hf(input_ids=IDS).logits
        got = Annealed(model, annealed_mask(0, 100, cfg.model.context))(IDS)
        keep = [i for i in range(rows) if i != tok.mask_id]  # a tied head's mask column is the new row's
        torch.testing.assert_close(got[:, 1:, keep], want[:, :-1, keep], atol=1e-4, rtol=1e-4)
        assert not model.embed.weight[tok.mask_id].any()


def test_train_init_from_a_causal_lm_folder_gives_an_ordinary_run(hf_dirs, tmp_path):
    """The command line: a transformers LLaMA folder converted by a few masked-diffusion steps is
    a run every command reads (generate, eval); a GPT-Neo folder (not a layout our Transformer
    loads) and a window longer than the model's positions are one-line errors before training."""
    import json

    root, _ = hf_dirs
    data = tmp_path / "corpus.txt"
    data.write_text("\n".join(CORPUS * 8))
    out = tmp_path / "conv"
    args = ("train", "--init", root / "llama", "--process", "masked", "--data", data, "--quiet",
            "--set", "model.context=32", "--set", "train.batch_size=4", "--set", "train.eval_every=2",
            "--set", "train.warmup_steps=1", "--set", "data.val_fraction=0.2")
    done = in_process(*args, "--out", out, "--set", "train.max_steps=2")
    assert done.returncode == 0, done.stderr
    saved = json.loads((out / "config.json").read_text())
    assert saved["process"]["name"] == "masked" and saved["model"]["logits_shift"] == 1
    assert saved["model"]["context"] == 32 and saved["model"]["norm"] == "rms"
    gen = in_process("generate", "--model", out, "the cat", "--length", "6", "--steps", "3", "--seed", "0")
    assert gen.returncode == 0 and gen.stdout.startswith("the cat"), gen.stderr
    ev = in_process("eval", out, "--data", data, "--num-samples", "0", "--json")
    assert ev.returncode == 0, ev.stderr
    assert json.loads(ev.stdout)["process"] == "masked"
    for bad, why in (((root / "gptneo", "--process", "masked"), "model_type 'gpt_neo'"),
                     ((root / "llama", "--process", "masked", "--set", "model.context=512"), "128 positions")):
        err = in_process("train", "--init", *bad, "--data", data, "--out", tmp_path / "bad", "--quiet")
        assert err.returncode != 0 and why in err.stderr and "Traceback" not in err.stderr, err.stderr
        assert len(err.stderr.strip().splitlines()) == 1 and not (tmp_path / "bad").exists()


class _Payload:
    """A pickle that leaves a marker file when unpickled without weights_only."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_folder_with_only_pickled_weights_is_refused_unopened(hf_dirs, tmp_path):
    """A transformers folder that holds only pytorch_model.bin (GPT-Neo: the through-transformers
    path) is refused in one line that says how to convert it, and the file is never unpickled
    (here it would leave a marker). Catches the old path: transformers' torch.load (weights-only,
    but an unpickling all the same), ending in exit 70 with torch's advice to retry with
    weights_only=False; RELIABILITY.md promises no pickle is ever opened."""
    import pickle
    import shutil

    root, _ = hf_dirs
    folder = tmp_path / "neo-bin"
    shutil.copytree(root / "gptneo", folder)
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "unpickled"
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(_Payload(marker)))
    done = in_process("generate", "--model", folder, "the", "--length", "4")
    assert done.returncode == 2, done.stderr
    assert "has only pickled weights (.bin/.pt), which textdiffusion never loads: convert them" in done.stderr
    assert not marker.exists()
