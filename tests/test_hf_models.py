"""Any transformers masked LM as a diffusion denoiser and any causal LM as an AR model
(models/adapters/hf_masked.py, hf_causal.py): tiny models made by transformers itself, saved with
save_pretrained, give their own forward's logits through our loaders, and decode through our
samplers (AR greedy = transformers' own greedy generate)."""

import pytest
import torch
import transformers  # the hf extra; dev installs it
from commands import in_process
from public_models import CORPUS, tiny_tokenizer
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from textdiffusion.pipeline import continue_prompt
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
                        ("llama", transformers.LlamaForCausalLM(transformers.LlamaConfig(**small, rope_theta=10000.0))),
                        ("qwen2", transformers.Qwen2ForCausalLM(transformers.Qwen2Config(
                            **small, rope_theta=1e6, tie_word_embeddings=True)))):
        with torch.no_grad():  # transformers' init is tiny (std 0.02): spread the logits so greedy is not a tie
            for p in model.parameters():
                p.mul_(12.0 if p.dim() > 1 else 1.0)
        model.eval().save_pretrained(root / name)
        _save_tokenizer(root / name, bpe, eos_token="<|endoftext|>")
        made[name] = model
    return root, made


@pytest.mark.parametrize("name", ["bert", "gpt2", "llama", "qwen2"])
def test_a_transformers_model_gives_its_own_logits_through_our_loader(hf_dirs, name):
    """BERT and GPT-2 run through transformers; LLaMA and Qwen2 (tied head, GQA, q/k/v biases)
    load natively into our Transformer, so this compares two implementations: catches a wrong
    LLaMA/Qwen2 weight map, RoPE theta, the tied head left random, or biases dropped."""
    root, made = hf_dirs
    run = load_run(root / name)
    with torch.no_grad():
        want = made[name](input_ids=IDS).logits
        got = run.model(IDS)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert run.process.name == ("masked" if name == "bert" else "ar")
    if name == "bert":
        assert run.process.mask_id == 4 and run.tokenizer.eot_id == 3  # [MASK], [SEP]


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_ar_greedy_decoding_is_transformers_generate(hf_dirs, name):
    """Our AR sampler on a transformers causal LM, greedy, writes the tokens of transformers'
    own generate(do_sample=False): GPT-2 through its history-carrying cache, LLaMA natively with
    our KV cache. Catches the history dropped between calls or positions restarting per call."""
    root, made = hf_dirs
    run = load_run(root / name)
    ids = torch.from_numpy(run.tokenizer.encode("the cat"))[None]
    want = made[name].generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=10, do_sample=False,
                               min_new_tokens=10, pad_token_id=0)
    gen, texts, _ = continue_prompt(run, "the cat", length=10, sampler="ar", temperature=0.0)
    assert gen.tokens[0].tolist() == want[0].tolist()


def test_rows_of_other_lengths_decode_as_alone_through_transformers(hf_dirs):
    """Two requests of different prompt lengths joined in one batch (a left-padded cache, as the
    server batches them) decode what each decodes alone: the padding is masked and each row's
    positions are its own."""
    from textdiffusion.sampling import build_sampler
    from textdiffusion.sampling.base import Plan, prompt_canvas

    root, _ = hf_dirs
    run = load_run(root / "gpt2")
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
