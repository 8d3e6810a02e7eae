"""Tokenizers: character, byte and BPE, behind one interface, saved with every model.

Special tokens live in one place (``SPECIALS``) and always take the ids right after the
ordinary vocabulary, in this order: end-of-text, mask, pad, unknown. Every tokenizer knows how
many UTF-8 bytes each token stands for, so evaluation can report bits per byte and models with
different tokenizers compare.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from .errors import TokenizerError
from .fileio import write_atomic

EOT, MASK, PAD, UNK = "<|endoftext|>", "<|mask|>", "<|pad|>", "<|unk|>"
SPECIALS = (EOT, MASK, PAD, UNK)
MASK_GLYPH = "░"  # how a mask token is shown when decoding with show_mask=True


def _describe(c: str) -> str:
    """A character as an error message shows it: itself and its code point (a special token as is)."""
    if len(c) > 1:
        return repr(c)
    shown = repr(c) if c.isprintable() and not 0xD800 <= ord(c) <= 0xDFFF else "a character"
    return f"{shown} (U+{ord(c):04X})"




class Tokenizer:
    """Common interface. Subclasses define ``base_size``, ``_encode``, ``_piece_bytes``."""

    kind: str
    base_size: int  # ordinary tokens; specials follow

    @property
    def vocab_size(self) -> int:
        return self.base_size + len(SPECIALS)

    @property
    def eot_id(self) -> int:
        return self.base_size

    @property
    def mask_id(self) -> int:
        return self.base_size + 1

    @property
    def pad_id(self) -> int:
        return self.base_size + 2

    @property
    def unk_id(self) -> int:
        return self.base_size + 3

    def encode(self, text: str) -> np.ndarray:
        """Text -> int64 array of ids (no specials added)."""
        return self._encode(text)

    def encode_exact(self, text: str, what: str = "the text") -> np.ndarray:
        """``encode`` for text a user gave (a prompt, a template, a message): it must come back
        verbatim from ``decode``, so characters the tokenizer cannot spell (never seen in its
        corpus, a literal special token, text that is not valid Unicode) are refused by name
        instead of being dropped."""
        bad = self.unknown_characters(text)
        if bad:
            shown = ", ".join(_describe(c) for c in bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
            raise TokenizerError(f"{what} has characters this model's tokenizer cannot spell: {shown}; "
                                 f"remove or replace them")
        return self._encode(text)

    def unknown_characters(self, text: str) -> list[str]:
        """The distinct characters (or literal special tokens) of ``text`` that would not come
        back from ``decode(encode(text))``, in order of first appearance."""
        out = [c for c in dict.fromkeys(text) if 0xD800 <= ord(c) <= 0xDFFF]  # lone surrogates
        return out + [s for s in SPECIALS if s in text]

    def encode_documents(self, docs: Iterable[str]) -> np.ndarray:
        """Concatenate documents, each followed by the end-of-text token."""
        parts = []
        eot = np.array([self.eot_id], dtype=np.int64)
        for doc in docs:
            parts.append(self.encode(doc))
            parts.append(eot)
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def decode(self, ids: Iterable[int], show_mask: bool = False) -> str:
        """Ids -> text. Specials are dropped (end-of-text becomes a newline); masks can be shown."""
        out: list[str] = []
        run: list[int] = []
        for i in ids:
            i = int(i)
            if i < self.base_size:
                run.append(i)
                continue
            if run:
                out.append(self._decode(run))
                run = []
            if i == self.eot_id:
                out.append("\n")
            elif i == self.mask_id and show_mask:
                out.append(MASK_GLYPH)
        if run:
            out.append(self._decode(run))
        return "".join(out)

    def token_bytes(self) -> np.ndarray:
        """UTF-8 bytes each id stands for: the denominator of bits/byte. Specials count 0 bytes
        (end-of-text is a boundary, not text; an unknown character's bytes are not known), so
        their bits are charged to the real text around them: bits/byte errs on the high side."""
        counts = np.zeros(self.vocab_size, dtype=np.int64)
        counts[: self.base_size] = self._piece_bytes()
        return counts

    def save(self, path: str | Path) -> None:
        write_atomic(path, json.dumps({"kind": self.kind, **self._state()}) + "\n")

    # subclass hooks
    def _encode(self, text: str) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def _decode(self, ids: list[int]) -> str:  # pragma: no cover
        raise NotImplementedError

    def _piece_bytes(self) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def _state(self) -> dict:  # pragma: no cover
        raise NotImplementedError


class CharTokenizer(Tokenizer):
    """One id per Unicode character seen in the corpus; unseen characters map to ``<|unk|>``."""

    kind = "char"

    def __init__(self, chars: list[str]):
        if not chars:
            raise TokenizerError("character vocabulary is empty (is the corpus empty?)")
        self.chars = list(chars)
        self.base_size = len(self.chars)
        codes = np.array([ord(c) for c in self.chars], dtype=np.int64)
        # code point -> id lookup table, vectorised encoding of large corpora
        self._lut = np.full(int(codes.max()) + 1, -1, dtype=np.int64)
        self._lut[codes] = np.arange(len(codes))

    @classmethod
    def train(cls, texts: Iterable[str]) -> CharTokenizer:
        seen: set[str] = set()
        for t in texts:
            seen.update(t)
        return cls(sorted(seen))

    def unknown_characters(self, text: str) -> list[str]:
        known = set(self.chars)
        return [c for c in dict.fromkeys(text) if c not in known]

    def _encode(self, text: str) -> np.ndarray:
        codes = np.frombuffer(text.encode("utf-32-le", errors="surrogatepass"), dtype=np.uint32).astype(np.int64)
        ids = np.full(len(codes), self.unk_id, dtype=np.int64)
        inside = codes < len(self._lut)
        found = self._lut[codes[inside]]
        ids[inside] = np.where(found >= 0, found, self.unk_id)
        return ids

    def _decode(self, ids: list[int]) -> str:
        return "".join(self.chars[i] for i in ids)

    def _piece_bytes(self) -> np.ndarray:
        return np.array([len(c.encode("utf-8")) for c in self.chars], dtype=np.int64)

    def _state(self) -> dict:
        return {"chars": self.chars}


class ByteTokenizer(Tokenizer):
    """The 256 byte values of UTF-8 text; never unknown."""

    kind = "byte"
    base_size = 256

    def unknown_characters(self, text: str) -> list[str]:
        return [c for c in dict.fromkeys(text) if 0xD800 <= ord(c) <= 0xDFFF]  # every other text has bytes

    def _encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8", errors="replace"), dtype=np.uint8).astype(np.int64)

    def _decode(self, ids: list[int]) -> str:
        return bytes(ids).decode("utf-8", errors="replace")

    def _piece_bytes(self) -> np.ndarray:
        return np.ones(256, dtype=np.int64)

    def _state(self) -> dict:
        return {}


class BPETokenizer(Tokenizer):
    """Byte-level BPE trained on the corpus with HF ``tokenizers``."""

    kind = "bpe"

    def __init__(self, hf_json: str):
        from tokenizers import Tokenizer as HFTokenizer

        self._hf = HFTokenizer.from_str(hf_json)
        self._json = hf_json
        # HF places our specials first (ids 0..3); we keep our convention (specials last) by
        # remapping: ours = hf - 4 for ordinary tokens, base_size + k for special k.
        self.base_size = self._hf.get_vocab_size() - len(SPECIALS)
        for k, tok in enumerate(SPECIALS):
            if self._hf.token_to_id(tok) != k:
                raise TokenizerError("BPE tokenizer file does not have textdiffusion's special tokens")

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> BPETokenizer:
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, models, pre_tokenizers, trainers

        hf = HFTokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=list(SPECIALS),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        hf.train_from_iterator(texts, trainer=trainer)
        return cls(hf.to_str())

    def _encode(self, text: str) -> np.ndarray:
        ids = np.array(self._hf.encode(text).ids, dtype=np.int64) - len(SPECIALS)
        if (ids < 0).any():  # the text spelled out a special token literally
            ids[ids < 0] = self.unk_id
        return ids

    def encode_documents(self, docs: Iterable[str]) -> np.ndarray:
        docs = list(docs)  # batch through the Rust encoder: much faster on large corpora
        eot = np.array([self.eot_id], dtype=np.int64)
        parts = []
        for enc in self._hf.encode_batch(docs):
            ids = np.array(enc.ids, dtype=np.int64) - len(SPECIALS)
            ids[ids < 0] = self.unk_id
            parts += [ids, eot]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def _decode(self, ids: list[int]) -> str:
        return self._hf.decode([i + len(SPECIALS) for i in ids])

    def _piece_bytes(self) -> np.ndarray:
        # in byte-level BPE every character of a token's string is exactly one byte
        vocab = self._hf.get_vocab()
        out = np.zeros(self.base_size, dtype=np.int64)
        for tok, i in vocab.items():
            if i >= len(SPECIALS):
                out[i - len(SPECIALS)] = len(tok)
        return out

    def _state(self) -> dict:
        return {"hf": self._json}


def train_tokenizer(kind: str, texts: list[str], vocab_size: int = 4096) -> Tokenizer:
    if kind == "char":
        return CharTokenizer.train(texts)
    if kind == "byte":
        return ByteTokenizer()
    if kind == "bpe":
        return BPETokenizer.train(texts, vocab_size)
    raise TokenizerError(f"unknown tokenizer {kind!r} (choose char, byte or bpe)")


def load_tokenizer(path: str | Path) -> Tokenizer:
    try:
        state = json.loads(Path(path).read_text())
        kind = state["kind"]
        if kind == "char":
            return CharTokenizer(state["chars"])
        if kind == "byte":
            return ByteTokenizer()
        if kind == "bpe":
            return BPETokenizer(state["hf"])
    except TokenizerError:
        raise
    except Exception as exc:  # json errors, missing keys, HF's own parse errors
        raise TokenizerError(f"cannot read tokenizer {path}: {exc}") from None
    raise TokenizerError(f"cannot read tokenizer {path}: unknown kind {kind!r}")
