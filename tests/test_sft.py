"""Instruction tuning: the prompt is never noised and never scored, SFT rows are padded with
end-of-text, and on a task with one right answer (reply with each letter of the prompt moved on
by one: "abf" -> "bca") a briefly tuned model answers unseen prompts correctly, far above an
untrained one."""

import json
import random

import numpy as np
import pytest
import torch

from textdiffusion.config import Config, ModelConfig, ProcessConfig, TrainConfig
from textdiffusion.control import chat, conversation
from textdiffusion.data import DataError, Pair, chat_prompt, read_pairs, sft_rows
from textdiffusion.runs import build_model, load_run
from textdiffusion.tokenizers import CharTokenizer
from textdiffusion.training.trainer import train

LETTERS = "abcdef"
CONTEXT = 32
WORD = 6  # letters per prompt: 6**6 = 46,656 words, so 20,000 training pairs cannot be memorised, only the rule learned


def _tokenizer():
    return CharTokenizer(sorted(set(LETTERS + chat_prompt(""))))


def test_read_pairs_and_rows(tmp_path):
    f = tmp_path / "pairs.jsonl"
    f.write_text('{"prompt": "abc", "response": "cba"}\n\n{"prompt": "ab", "response": "ba", "label": "x"}\n')
    pairs = read_pairs(str(f))
    assert [(p.prompt, p.response, p.label) for p in pairs] == [("abc", "cba", None), ("ab", "ba", "x")]
    tok = _tokenizer()
    rows = sft_rows(pairs + [Pair("long", "a" * 40, "b")], tok, CONTEXT)
    assert len(rows) == 2  # the prompt that cannot fit is left out
    prompt = tok.encode(chat_prompt("abc")).tolist()
    row, fixed = rows.tokens[0].tolist(), rows.fixed[0]
    assert row[0] == tok.eot_id and row[1 : 1 + len(prompt)] == prompt
    assert fixed[: 1 + len(prompt)].all() and not fixed[1 + len(prompt) :].any()
    assert tok.decode(row[1 + len(prompt) : 4 + len(prompt)]) == "cba"
    assert all(t == tok.eot_id for t in row[4 + len(prompt) :])  # padded with end-of-text (scored)
    for bad, needle in [("{\"prompt\": 1, \"response\": \"x\"}", "must be strings"), ("not json", "expected a JSON"),
                        ("{\"text\": \"x\"}", "expected a JSON")]:
        f.write_text(bad + "\n")
        with pytest.raises(DataError, match=needle):
            read_pairs(str(f))
    f.write_text("")
    with pytest.raises(DataError, match="empty"):
        read_pairs(str(f))


class _Spy(torch.nn.Module):
    """Records what the denoiser is given; wraps a real model."""

    def __init__(self, model):
        super().__init__()
        self.model, self.cfg, self.inputs = model, model.cfg, []

    def forward(self, x, *args, **kwargs):
        self.inputs.append(x.detach().clone())
        return self.model(x, *args, **kwargs)

    def embeddings(self):
        return self.model.embeddings()


@pytest.mark.parametrize("process", ["masked", "uniform", "sedd-absorb", "sedd-uniform", "block", "ar", "gaussian"])
def test_prompt_is_never_noised_and_never_scored(process):
    tok = _tokenizer()
    cfg = Config(model=ModelConfig(n_layer=1, n_head=2, d_model=32, context=CONTEXT), process=ProcessConfig(name=process))
    cfg.model.vocab_size = tok.vocab_size
    torch.manual_seed(0)
    model, objective = build_model(cfg, tok)
    rows = sft_rows([Pair(str(i), "abcab", "bacba") for i in range(8)], tok, CONTEXT)
    batch, fixed = torch.from_numpy(rows.tokens), torch.from_numpy(rows.fixed)
    spy = _Spy(model)
    gen = torch.Generator().manual_seed(0)
    out = objective.loss(spy, batch, gen, fixed)
    assert out.num_tokens == int((~fixed[:, 1:]).sum())  # only the response (and its padding) is scored
    if process not in ("ar", "gaussian"):  # the network's token input keeps every prompt token clean
        x0, keep = batch[:, 1:], fixed[:, 1:]
        for x in spy.inputs:
            assert torch.equal(x[:, : x0.shape[1]][keep], x0[keep])
    assert torch.isfinite(out.loss)


def _shift(word: str) -> str:
    return "".join(LETTERS[(LETTERS.index(c) + 1) % len(LETTERS)] for c in word)


def _task_pairs(n, seed):
    rng = random.Random(seed)
    words = ["".join(rng.choice(LETTERS) for _ in range(WORD)) for _ in range(n)]
    return [Pair(f"{i}", w, _shift(w)) for i, w in enumerate(words)]


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    tok = _tokenizer()
    train_pairs = _task_pairs(20_200, seed=0)
    cfg = Config(model=ModelConfig(n_layer=2, n_head=4, d_model=64, context=CONTEXT), process=ProcessConfig(name="masked"),
                 train=TrainConfig(batch_size=64, max_steps=400, lr=3e-3, min_lr=3e-4, warmup_steps=20,
                                   eval_every=400, ckpt_every=400, log_every=100))
    cfg.data.sft = True
    out = tmp_path_factory.mktemp("sft")
    splits = {"train": sft_rows(train_pairs[:20_000], tok, CONTEXT), "val": sft_rows(train_pairs[20_000:], tok, CONTEXT)}
    train(cfg, out, splits, tok, progress=False)
    return load_run(out)


def test_tuned_model_answers_unseen_prompts(tuned):
    """A model that learned the rule answers every unseen prompt: seven trainings (six seeds, AVX-512
    and AVX2 kernels) each scored 100 of 100 held-out prompts exactly, so 36 of 40 leaves a wide
    margin for kernel noise. The earlier form of this task (4-letter words, 1,296 in all, most of
    them in the training set) was learned half by memorising, and held-out accuracy swung between
    0.61 and 0.83 with the CPU's floating-point kernels against a 0.8 threshold.
    Catches: the prompt noised or dropped at generation (chat's canvas not fixing it: 0 of 40),
    the confidence sampler revealing its least confident positions first, and a response
    misaligned with its prompt in the SFT rows."""
    seen = {p.prompt for p in _task_pairs(20_200, seed=0)}
    tests = [p for p in _task_pairs(200, seed=7) if p.prompt not in seen][:40]
    assert len(tests) == 40
    right = [chat(tuned, p.prompt, steps=16, sampler="confidence", seed=0).texts[0] == p.response for p in tests]
    untrained = load_run(tuned.run_dir)
    torch.manual_seed(0)
    for param in untrained.model.parameters():
        torch.nn.init.normal_(param, std=0.02)
    wrong = [chat(untrained, p.prompt, steps=16, sampler="confidence", seed=0).texts[0] == p.response for p in tests]
    assert np.mean(right) >= 0.9, np.mean(right)
    assert np.mean(wrong) <= 0.1


def test_chat_keeps_the_template_and_drops_old_turns(tuned):
    history = [("abca", "bcdb")] * 3
    text = conversation(history[:1], "abcd")
    assert text == chat_prompt("abca") + "bcdb\n" + chat_prompt("abcd")
    # Known answer: the message alone takes 1 + 19 + 6 = 26 of the 32 positions, so every old turn
    # (28 tokens each) is dropped and the reply is exactly the one without history, the rule's
    # answer. Catches the newest turn dropped first and history kept past the context.
    res = chat(tuned, "fedcba", [("abcdef", "bcdefa")] * 3, steps=16, sampler="confidence", seed=0)
    alone = chat(tuned, "fedcba", steps=16, sampler="confidence", seed=0)
    assert res.extra["turns_kept"] == 0 and res.texts == alone.texts == [_shift("fedcba")]
    with pytest.raises(ValueError, match="does not fit"):
        chat(tuned, "a" * 40)
    with pytest.raises(ValueError, match="prompt_drop"):  # prompt guidance needs a run tuned with prompt dropping
        chat(tuned, "abcd", guidance=2.0)


def test_sft_jsonl_through_the_recipe(tmp_path):
    from textdiffusion.config import load_config
    from textdiffusion.training.recipe import train_run

    f = tmp_path / "pairs.jsonl"
    f.write_text("".join(json.dumps({"prompt": p.prompt, "response": p.response}) + "\n" for p in _task_pairs(60, 1)))
    cfg = load_config(None, [f"data.path={f}", "data.sft=true", "model.n_layer=1", "model.d_model=32",
                             "model.n_head=2", "model.context=32", "train.max_steps=3", "train.batch_size=4",
                             "train.eval_every=3", "train.ckpt_every=3"])
    result = train_run(cfg, tmp_path / "run", progress=False)
    assert result.step == 3 and result.val_loss is not None
    # fine-tune that run again from its weights (train.init)
    cfg2 = load_config(None, [f"data.path={f}", "data.sft=true", f"train.init={tmp_path / 'run'}",
                              "train.max_steps=2", "train.batch_size=4", "train.eval_every=2", "train.ckpt_every=2"])
    assert train_run(cfg2, tmp_path / "run2", progress=False).step == 2
    assert json.loads((tmp_path / "run2" / "config.json").read_text())["model"]["d_model"] == 32  # the init run's
