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

    @property
    def banned_ids(self) -> tuple[int, ...]:
        """Ids a sampler never writes (they are never text)."""
        return (self.mask_id, self.pad_id, self.unk_id)

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
            if self._is_text(i):
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

    def _is_text(self, i: int) -> bool:
        """Whether id ``i`` decodes to text (the others: specials)."""
        return i < self.base_size

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


class HFTokenizer(Tokenizer):
    """A Hugging Face ``tokenizer.json`` used as it is, with ids as the file gives them: a public
    model's tokenizer (LLaDA, Dream, any HF model) or one of ours exported for transformers
    (``hf_json``). ``specials`` names the ids of end-of-text, mask, pad and unknown (pad and
    unknown may be None: pad falls back to end-of-text); ``vocab_size`` is the model's (its
    embedding may have more rows than the tokenizer has tokens). Decoding drops every special
    token the file declares (end-of-text becomes a newline, masks can be shown)."""

    kind = "hf"

    def __init__(self, hf_json: str, specials: dict, vocab_size: int | None = None):
        from tokenizers import Tokenizer as RustTokenizer

        self._hf = RustTokenizer.from_str(hf_json)
        self._json = hf_json
        self.specials = {k: (None if specials.get(k) is None else int(specials[k])) for k in ("eot", "mask", "pad", "unk")}
        if self.specials["eot"] is None or self.specials["mask"] is None:
            raise TokenizerError("an HF tokenizer needs its end-of-text and mask ids")
        self.base_size = self._hf.get_vocab_size()
        self._vocab_size = int(vocab_size or self.base_size)
        if self.base_size > self._vocab_size:
            raise TokenizerError(f"the tokenizer has {self.base_size} tokens but the model only {self._vocab_size} "
                                 f"embedding rows: they do not belong together")
        if max(i for i in self.specials.values() if i is not None) >= self._vocab_size:
            raise TokenizerError(f"a special id of {self.specials} is outside the vocabulary ({self._vocab_size})")
        added = json.loads(hf_json).get("added_tokens", [])
        self.special_strings = [a["content"] for a in added if a.get("special")]
        self.special_ids = {a["id"] for a in added if a.get("special")} | {i for i in self.specials.values() if i is not None}
        decoder = json.loads(hf_json).get("decoder") or {}
        self._byte_level = decoder.get("type") == "ByteLevel"

    vocab_size = property(lambda self: self._vocab_size)
    eot_id = property(lambda self: self.specials["eot"])
    mask_id = property(lambda self: self.specials["mask"])
    pad_id = property(lambda self: self.specials["pad"] if self.specials["pad"] is not None else self.specials["eot"])
    unk_id = property(lambda self: self.specials["unk"] if self.specials["unk"] is not None else self.specials["eot"])

    @property
    def banned_ids(self) -> tuple[int, ...]:
        """Ids a sampler never writes: the mask, and pad / unknown unless they are end-of-text."""
        return tuple(dict.fromkeys(i for i in (self.mask_id, self.specials["pad"], self.specials["unk"])
                                   if i is not None and i != self.eot_id))

    def unknown_characters(self, text: str) -> list[str]:
        out = [c for c in dict.fromkeys(text) if 0xD800 <= ord(c) <= 0xDFFF]
        unk = self.specials["unk"]
        for c in dict.fromkeys(text):  # a vocabulary without byte fallback: characters it cannot spell
            if c not in out:
                ids = self._hf.encode(c, add_special_tokens=False).ids
                if (not ids and not c.isspace()) or unk in ids:  # spaces may vanish in a whitespace pre-tokenizer
                    out.append(c)
        return out + [s for s in self.special_strings if s in text]

    def _encode(self, text: str) -> np.ndarray:
        return np.array(self._hf.encode(text, add_special_tokens=False).ids, dtype=np.int64)

    def encode_documents(self, docs: Iterable[str]) -> np.ndarray:
        eot = np.array([self.eot_id], dtype=np.int64)
        parts = []
        for enc in self._hf.encode_batch(list(docs), add_special_tokens=False):
            parts += [np.array(enc.ids, dtype=np.int64), eot]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def _is_text(self, i: int) -> bool:
        return i < self.base_size and i not in self.special_ids

    def _decode(self, ids: list[int]) -> str:
        return self._hf.decode(ids, skip_special_tokens=False)

    def token_bytes(self) -> np.ndarray:
        """UTF-8 bytes per id: the token string's length for byte-level BPE (one character per
        byte), else the length of the token decoded alone; specials and unused rows count 0."""
        counts = np.zeros(self.vocab_size, dtype=np.int64)
        for tok, i in self._hf.get_vocab().items():
            if i in self.special_ids or i >= self.vocab_size:
                continue
            counts[i] = len(tok) if self._byte_level else len(self._hf.decode([i]).encode("utf-8"))
        return counts

    def _state(self) -> dict:
        return {"hf": self._json, "specials": self.specials, "vocab_size": self._vocab_size}


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in character for each byte (HF byte-level BPE's alphabet)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def to_hf_json(tokenizer: Tokenizer) -> str:
    """One of our tokenizers as a Hugging Face ``tokenizer.json`` that gives exactly our ids
    (ordinary tokens first, then end-of-text, mask, pad, unknown), for ``PreTrainedTokenizerFast``."""
    from tokenizers import Regex, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as RustTokenizer

    if isinstance(tokenizer, HFTokenizer):
        return tokenizer._json
    specials = {tok: tokenizer.base_size + k for k, tok in enumerate(SPECIALS)}
    if isinstance(tokenizer, BPETokenizer):  # same merges, ids renumbered: ours = HF's - 4, specials last
        state = json.loads(tokenizer._json)
        state["model"]["vocab"] = {tok: (specials[tok] if tok in specials else i - len(SPECIALS))
                                   for tok, i in state["model"]["vocab"].items()}
        for added in state.get("added_tokens", []):
            added["id"] = specials[added["content"]]
        return json.dumps(state)
    one_char = pre_tokenizers.Split(Regex("."), "isolated")  # every character its own piece
    if isinstance(tokenizer, CharTokenizer):
        vocab = {c: i for i, c in enumerate(tokenizer.chars)}
        hf = RustTokenizer(models.WordLevel({**vocab, **specials}, unk_token=UNK))
        hf.pre_tokenizer, hf.decoder = one_char, decoders.Fuse()
    elif isinstance(tokenizer, ByteTokenizer):
        vocab = {c: b for b, c in bytes_to_unicode().items()}
        hf = RustTokenizer(models.WordLevel({**vocab, **specials}, unk_token=UNK))
        hf.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False), one_char])
        hf.decoder = decoders.ByteLevel()
    else:  # pragma: no cover
        raise TokenizerError(f"cannot export a {tokenizer.kind} tokenizer for transformers")
    from tokenizers import AddedToken

    hf.add_special_tokens([AddedToken(tok, special=True, normalized=False) for tok in SPECIALS])
    return hf.to_str()


def train_tokenizer(kind: str, texts: Iterable[str], vocab_size: int = 4096) -> Tokenizer:
    """A tokenizer of ``kind`` fitted to ``texts`` (any iterable: it is read once, as it streams)."""
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
        if kind == "hf":
            return HFTokenizer(state["hf"], state["specials"], state.get("vocab_size"))
    except TokenizerError:
        raise
    except Exception as exc:  # json errors, missing keys, HF's own parse errors
        raise TokenizerError(f"cannot read tokenizer {path}: {exc}") from None
    raise TokenizerError(f"cannot read tokenizer {path}: unknown kind {kind!r}")
