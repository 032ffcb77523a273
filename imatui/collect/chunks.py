"""Cutting the calibration text into chunks exactly as llama-imatrix does (tools/imatrix/imatrix.cpp).

- The whole text is tokenized once, with the BOS token in front when the model's tokenizer adds one
  (llama_vocab_get_add_bos) and never an EOS; special-token text in the file is not parsed.
- n_chunk = min(--chunks, n_tokens // ctx); chunk i is tokens[i*ctx : (i+1)*ctx] and, when the
  tokenizer adds a BOS, its first token is replaced by the BOS.
- Perplexity counts only the second half of every chunk: with first = ctx // 2, the logits at
  positions first .. ctx-2 predict tokens first+1 .. ctx-1 (ctx - first - 1 tokens per chunk).
- llama-imatrix refuses a text shorter than 2 * ctx tokens.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np


@dataclass
class Chunks:
    tokens: np.ndarray  # int64, the whole tokenized text (BOS first when add_bos)
    ctx: int
    n_chunk: int
    add_bos: bool
    bos_id: int | None

    def chunk(self, i: int) -> np.ndarray:
        out = np.array(self.tokens[i * self.ctx:(i + 1) * self.ctx], dtype=np.int64)
        if self.add_bos:
            out[0] = self.bos_id
        return out

    def batch(self, start: int, stop: int) -> np.ndarray:
        """Chunks start..stop-1 as a (stop-start, ctx) array."""
        return np.stack([self.chunk(i) for i in range(start, stop)]) if stop > start else \
            np.zeros((0, self.ctx), dtype=np.int64)

    @property
    def ppl_first(self) -> int:
        return self.ctx // 2

    @property
    def ppl_tokens_per_chunk(self) -> int:
        return self.ctx - self.ppl_first - 1


def tokenizer_adds_bos(tokenizer) -> bool:
    """Whether encoding adds the BOS (what llama_vocab_get_add_bos says for a GGUF's own tokenizer)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return False
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bool(ids) and ids[0] == bos


def tokenize(tokenizer, text: str) -> tuple[np.ndarray, bool]:
    """(tokens, add_bos): the text tokenized once, BOS in front when the tokenizer adds one."""
    add_bos = tokenizer_adds_bos(tokenizer)
    ids = tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    if add_bos:
        ids = [tokenizer.bos_token_id] + list(ids)
    return np.asarray(ids, dtype=np.int64), add_bos


def make_chunks(tokens: np.ndarray, ctx: int, max_chunks: int | None, add_bos: bool,
                bos_id: int | None) -> Chunks:
    """Raises ValueError (one line for the CLI) when the text is too short for two chunks."""
    if ctx < 2:
        raise ValueError(f"context size {ctx} is too small")
    if len(tokens) < 2 * ctx:
        raise ValueError(f"the text has {len(tokens)} tokens; a context of {ctx} needs at least {2 * ctx}")
    n_max = len(tokens) // ctx
    n_chunk = n_max if max_chunks is None or max_chunks < 0 else min(max_chunks, n_max)
    return Chunks(tokens=tokens, ctx=ctx, n_chunk=n_chunk, add_bos=add_bos, bos_id=bos_id)


def shortfall(asked: int | None, chunks: Chunks) -> str | None:
    """The warning when --chunks asked for more chunks than the text yields (None otherwise)."""
    if asked is None or asked < 0 or asked <= chunks.n_chunk:
        return None
    return (f"warning: --chunks {asked} asked for more than the text holds: {len(chunks.tokens)} tokens "
            f"make {chunks.n_chunk} chunks of {chunks.ctx}; collecting {chunks.n_chunk}")


def text_digest(text: str, ctx: int) -> str:
    """Identifies text + context size, so --resume refuses to continue on a different input."""
    h = hashlib.sha256()
    h.update(f"ctx={ctx}\n".encode())
    h.update(text.encode("utf-8", "surrogatepass"))
    return h.hexdigest()[:32]


# llama.cpp pre-tokenizer types whose first regex splits every digit apart ("\p{N}") before the
# GPT-2 expression (llama-vocab.cpp). transformers' GGUF loader builds a plain ByteLevel pre-tokenizer
# for them, which joins "\n\n" before a digit into two tokens where llama.cpp makes one, shifting every
# chunk boundary after it; putting the digit split in front restores llama.cpp's tokens.
_DIGIT_FIRST_PRE = {"smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva"}


def match_llama_pretokenizer(tokenizer, gguf_path) -> bool:
    """Aligns a tokenizer loaded from a GGUF with llama.cpp's pre-tokenizer; True when it changed it."""
    try:
        from gguf import GGUFReader
        from tokenizers import pre_tokenizers
    except ImportError:
        return False
    reader = GGUFReader(str(gguf_path), "r")
    field = reader.fields.get("tokenizer.ggml.pre")
    pre = field.contents() if field is not None else None
    del reader
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if pre not in _DIGIT_FIRST_PRE or backend is None:
        return False
    current = backend.pre_tokenizer
    if not isinstance(current, pre_tokenizers.ByteLevel):
        return False
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    return True
