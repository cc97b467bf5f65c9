"""A language model's figures: validation loss, perplexity, bits per character, next-token
accuracy and training throughput in tokens per second.

The evaluation measures the loss L (nats per token, the mean cross-entropy over every token
of the validation part) and the next-token accuracy of the averaged model, as for any task
(:mod:`distlib.tasks`); this module adds what follows from them for text:

    perplexity    = exp(L)
    bits_per_char = L / ln 2 / (characters per token)     (= bits per token with tokenizer=char)

and the tokens the workers trained on per second of wall time between evaluations
(evaluation time left out). They are fields of the evaluation record
(:class:`distlib.record.EvalRecord`), set only for language-model runs (None, and so absent
from the history, otherwise), and reach the console, TensorBoard, summary.json and
``distlib-compare`` from there.
"""
from __future__ import annotations

import math
import time
import numpy as np

#: the record keys a language-model run adds
LM_KEYS = ("perplexity", "bits_per_char", "tokens_per_s")


def lm_fields(loss: float, chars_per_token: float, tokens_per_s: float) -> dict[str, float]:
    """The figures that follow from the validation loss ``loss`` (nats per token)."""
    return {"perplexity": math.exp(loss) if loss < 700 else math.inf,
            "bits_per_char": loss / math.log(2) / chars_per_token,
            "tokens_per_s": tokens_per_s}


def unigram_entropy(tokens: np.ndarray, vocab_size: int) -> float:
    """H = -sum_v p_v ln p_v (nats) of the tokens' frequencies: the loss of the best model that
    ignores context, which a language model that learns anything must beat."""
    counts = np.bincount(np.asarray(tokens), minlength=vocab_size).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


class Throughput:
    """Tokens trained per wall-clock second, over the stretches between evaluations.

    Rank 0 calls :meth:`resume` when training (re)starts and after each evaluation, and
    :meth:`trained` once every worker has finished the evaluated step (after the evaluation's
    first collective), so the evaluation's own time is not counted.
    """

    def __init__(self, tokens_per_step: int) -> None:
        self.tokens_per_step = tokens_per_step      # all workers together
        self._t = time.perf_counter()
        self._step = 0

    def resume(self, step: int) -> None:
        self._t, self._step = time.perf_counter(), step

    def trained(self, step: int) -> float:
        """Tokens per second since the last :meth:`resume`, up to ``step`` (steps done)."""
        dt = time.perf_counter() - self._t
        return (step - self._step) * self.tokens_per_step / dt if dt > 0 else math.nan
