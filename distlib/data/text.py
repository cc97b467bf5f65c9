"""Text for language models: any UTF-8 file, as characters or bytes, split by position.

``dataset=text`` reads ``dataset.path`` (default: the Python documentation that every CPython
installation carries in ``pydoc_data/topics.py``, read at run time: nothing is downloaded and
nothing is copied into this repository). The token sequence is cut by position into a train
part, a validation part and a test part, in that order (``val_fraction``, ``test_fraction``):
no window of one part overlaps another.

A *sample* of the train part is a chunk of ``block_size`` tokens (chunk k starts at token
k * block_size); partitioning deals chunks to workers (``iid``: a seeded random set each;
``contiguous``: each worker its own range of chunks, so its own stretch of the text, which
is non-IID). A worker's mini-batch takes chunks from its shard, reshuffled every pass, and
from each a window of ``block_size + 1`` tokens starting at a random offset inside the chunk
(drawn from the worker's generator, as nanoGPT draws random windows), so one pass (an epoch)
sees about every token of the shard once. The model reads ``x = w[:-1]`` and predicts
``y = w[1:]``.

The validation part (``Dataset.val``: ``val_loss``, and the perplexity and bits per character
of the record) and the test part (``Dataset.test``: ``test_loss``) are evaluated in
consecutive windows (stride ``block_size``), every token predicted once.
"""
from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from distlib.data.datasets import DATASETS, Batches, Dataset
from distlib.errors import ConfigError
from distlib.options import choice, integer, number

TOKENIZERS = ("char", "byte")


class CharTokenizer:
    """One token per Unicode character of the corpus, ids in sorted order of the characters."""

    def __init__(self, text: str) -> None:
        self.chars = sorted(set(text))
        self._ids = {c: i for i, c in enumerate(self.chars)}

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> np.ndarray:
        return np.fromiter((self._ids[c] for c in text), dtype=np.int64, count=len(text))

    def decode(self, ids: np.ndarray | list[int]) -> str:
        return "".join(self.chars[int(i)] for i in ids)


class ByteTokenizer:
    """One token per byte of the UTF-8 encoding: 256 ids, any text."""

    vocab_size = 256

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64)

    def decode(self, ids: np.ndarray | list[int]) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")


@functools.lru_cache(maxsize=1)
def python_docs() -> str:
    """The default corpus: the topics of CPython's own documentation (``pydoc_data.topics``,
    about 0.47 M characters on Python 3.11), in a fixed order. It differs between Python
    versions; the banner's dataset line and summary.json record its size."""
    try:
        topics = importlib.import_module("pydoc_data.topics").topics
    except ImportError:
        raise ConfigError("dataset.path: this Python has no pydoc_data (the default corpus); "
                          "give a UTF-8 file with dataset.path=FILE") from None
    return "\n\n".join(topics[k] for k in sorted(topics))


def read_text(path: str | None) -> str:
    if path is None:
        return python_docs()
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"dataset.path: file {str(p)!r} does not exist")
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"dataset.path: {str(p)!r} is not UTF-8 ({e.reason} at byte {e.start})") from None


@dataclass
class TokenSplit:
    """A stretch of tokens, cut into chunks of ``block_size`` (the samples)."""

    tokens: torch.Tensor            # 1-D int64
    block_size: int
    num_classes: int                # the vocabulary size
    chars_per_token: float = 1.0    # for bits per character (a byte tokenizer: < 1)
    _copies: dict[torch.device, "TokenSplit"] = field(default_factory=dict, repr=False, compare=False)

    def __len__(self) -> int:
        """Chunks whose window of block_size + 1 tokens fits."""
        return max(0, (len(self.tokens) - 1) // self.block_size)

    def to(self, device: torch.device | str) -> "TokenSplit":
        device = torch.device(device)
        if self.tokens.device == device:
            return self
        if device not in self._copies:
            self._copies[device] = TokenSplit(self.tokens.to(device), self.block_size, self.num_classes,
                                              self.chars_per_token)
        return self._copies[device]

    def labels(self) -> np.ndarray:
        """No classes: one 0 per chunk (partitions deal chunks by index: iid or contiguous)."""
        return np.zeros(len(self), dtype=np.int64)

    def windows(self) -> torch.Tensor:
        """Every window of block_size + 1 tokens, as a (len(tokens) - block_size, block_size + 1) view."""
        return self.tokens.unfold(0, self.block_size + 1, 1)

    def batches(self, indices: np.ndarray, batch_size: int, seed: int) -> "TextBatches":
        return TextBatches(self, indices, batch_size, seed)

    def eval_batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Consecutive windows (stride block_size): every token but the first predicted once."""
        w = self.windows()[::self.block_size][:len(self)]
        for start in range(0, len(w), batch_size):
            b = w[start:start + batch_size]
            yield b[:, :-1], b[:, 1:]


class TextBatches(Batches):
    """One worker's endless stream of (x, y) windows from its chunks, reshuffled every pass:
    the shard's stream of :class:`Batches` (the same order, carry-over and saved state), whose
    samples are chunks; a window starts at a random offset inside its chunk, drawn from the
    worker's own generator after the batch's chunks."""

    def __init__(self, data: TokenSplit, indices: np.ndarray, batch_size: int, seed: int) -> None:
        self._windows = data.windows()
        super().__init__(data, indices, batch_size, seed)     # type: ignore[arg-type]

    def _set_order(self, order: torch.Tensor, pos: int) -> None:
        self._order, self._pos = order, pos     # chunk arithmetic stays on the CPU

    def _gather(self, pos: int) -> tuple[torch.Tensor, torch.Tensor]:
        chunks = self._order[pos:pos + self.batch_size]
        T = self.data.block_size
        offsets = torch.randint(0, T, (len(chunks),), generator=self.gen)
        starts = torch.clamp(chunks * T + offsets, max=len(self._windows) - 1)
        w = self._windows[starts.to(self._windows.device)]
        return w[:, :-1], w[:, 1:]


def split_by_position(n: int, val_fraction: float, test_fraction: float) -> tuple[slice, slice, slice]:
    """Train, validation and test as consecutive stretches of ``n`` tokens, in that order."""
    n_val, n_test = int(n * val_fraction), int(n * test_fraction)
    n_train = n - n_val - n_test
    return slice(0, n_train), slice(n_train, n_train + n_val), slice(n_train + n_val, n)


@DATASETS.register("text")
def text(path: str | None = None, tokenizer: str = "char", block_size: int = 64, val_fraction: float = 0.05,
         test_fraction: float = 0.05) -> Dataset:
    """A UTF-8 file (``path``; null: the Python docs in ``pydoc_data``) as a next-token task.

    ``tokenizer``: char (the corpus' characters) or byte (UTF-8 bytes, 256 ids);
    ``block_size``: tokens a model reads per window (at most the model's own block_size);
    ``val_fraction``, ``test_fraction``: the validation and test parts, cut by position (the
    run's ``dataset.val_fraction`` is this one: the text is not carved at random)."""
    choice("dataset.tokenizer", tokenizer, TOKENIZERS)
    T = integer("dataset.block_size", block_size, ge=1)
    number("dataset.val_fraction", val_fraction, gt=0, lt=1)
    number("dataset.test_fraction", test_fraction, gt=0, lt=1)
    if val_fraction + test_fraction >= 1:
        raise ConfigError(f"dataset.val_fraction: with test_fraction {test_fraction} leaves no training text; "
                          f"their sum must be < 1")
    corpus = read_text(path)
    tok = CharTokenizer(corpus) if tokenizer == "char" else ByteTokenizer()
    ids = tok.encode(corpus)
    tr, va, te = split_by_position(len(ids), val_fraction, test_fraction)
    tokens = torch.from_numpy(ids)

    def part(s: slice) -> TokenSplit:
        t = tokens[s]
        # Bytes that do not continue a UTF-8 sequence start a character.
        chars = len(t) if tokenizer == "char" else int(((t & 0xC0) != 0x80).sum())
        return TokenSplit(t, T, tok.vocab_size, chars / max(len(t), 1))

    train, val, test = part(tr), part(va), part(te)
    for name, s in (("train", train), ("validation", val), ("test", test)):
        if len(s) == 0:
            raise ConfigError(f"dataset.block_size: the {name} part ({len(s.tokens)} tokens) holds no window of "
                              f"{T + 1} tokens; use a longer text or a smaller block_size")
    return Dataset(train, test, (T,), tok.vocab_size, "text", val=val, task="language_model", tokenizer=tok)
