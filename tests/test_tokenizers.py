import numpy as np
import pytest

from textdiffusion.tokenizers import (
    SPECIALS,
    ByteTokenizer,
    CharTokenizer,
    TokenizerError,
    load_tokenizer,
    train_tokenizer,
)

TEXT = "def add(a, b):\n    return a + b  # café ✓\n"
CORPUS = [TEXT * 3, "print('hello world')\n" * 5, "for i in range(10):\n    total += i\n" * 4]


@pytest.mark.parametrize("kind", ["char", "byte", "bpe"])
def test_round_trip_specials_and_bytes(kind, tmp_path):
    tok = train_tokenizer(kind, CORPUS, vocab_size=300)
    ids = tok.encode(TEXT)
    assert ids.dtype == np.int64 and (ids < tok.base_size).all()
    assert tok.decode(ids) == TEXT
    # specials follow the ordinary vocabulary, in one fixed order
    assert [tok.eot_id, tok.mask_id, tok.pad_id, tok.unk_id] == list(range(tok.base_size, tok.base_size + 4))
    assert tok.vocab_size == tok.base_size + len(SPECIALS)
    # the bytes each token stands for add up to the text's UTF-8 length
    assert tok.token_bytes()[ids].sum() == len(TEXT.encode("utf-8"))
    assert tok.token_bytes()[tok.eot_id] == 0
    # documents are separated by end-of-text
    stream = tok.encode_documents(["ab", "cd"])
    assert (stream == tok.eot_id).sum() == 2 and stream[-1] == tok.eot_id
    # saved with the model and loaded back identically
    tok.save(tmp_path / "tok.json")
    again = load_tokenizer(tmp_path / "tok.json")
    assert again.vocab_size == tok.vocab_size and np.array_equal(again.encode(TEXT), ids)


def test_bpe_vocab_size_is_a_setting():
    small = train_tokenizer("bpe", CORPUS, vocab_size=280)
    big = train_tokenizer("bpe", CORPUS, vocab_size=320)
    assert small.vocab_size <= 280 < big.vocab_size <= 320
    assert len(big.encode(TEXT)) < len(ByteTokenizer().encode(TEXT))  # merges compress


def test_char_unknown_and_decode_masks():
    tok = CharTokenizer.train(["abc"])
    ids = tok.encode("abz")
    assert ids[-1] == tok.unk_id
    assert tok.decode([0, tok.mask_id, 1], show_mask=True) == "a░b"
    assert tok.decode([0, tok.mask_id, 1]) == "ab"


def test_bad_tokenizer_files(tmp_path):
    with pytest.raises(TokenizerError):
        load_tokenizer(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(TokenizerError):
        load_tokenizer(tmp_path / "bad.json")
    with pytest.raises(TokenizerError):
        CharTokenizer.train([""])
