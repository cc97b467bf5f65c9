"""Pairs of choices that cannot work together, refused before any work in one line.

A model builder declares the inputs it takes (:func:`distlib.models.accepts`); a dataset says
what its samples are (``Dataset.input_kind``). A CNN on vectors, an image model on text or a
GPT on images stops here, naming both and the models that would fit, instead of failing
inside the first forward pass.
"""
from __future__ import annotations

from typing import Callable

from distlib.data.datasets import Dataset
from distlib.errors import ConfigError

#: how a message names each kind of input
KIND_WORDS = {"image": "images (C, H, W)", "signal": "signals (C, L)", "vector": "vectors (D,)",
              "tokens": "token sequences (text)"}
#: partitions that make sense for data without classes (text: chunks by index)
UNLABELLED_PARTITIONS = ("iid", "contiguous")


def check_model_and_data(model: str, builder: Callable, dataset: Dataset, partition: str = "iid") -> None:
    """Raise a one-line ConfigError when ``model`` cannot read ``dataset``'s samples, or the
    partition needs classes the dataset does not have."""
    from distlib.models import MODELS
    kind = dataset.input_kind
    takes = getattr(builder, "inputs", None)
    if takes is not None and kind not in takes:
        fits = [n for n in MODELS.names() if kind in getattr(_builder(MODELS, n), "inputs", ())]
        raise ConfigError(f"model: {model} takes {' or '.join(KIND_WORDS[k] for k in takes)} but "
                          f"dataset {dataset.name} gives {KIND_WORDS[kind]} of shape {tuple(dataset.input_shape)}; "
                          f"models for this dataset: {', '.join(fits) or 'none shipped'}")
    if dataset.task == "language_model" and partition not in UNLABELLED_PARTITIONS:
        raise ConfigError(f"dataset.partition: {partition} splits by class, and dataset {dataset.name} has none; "
                          f"allowed: {', '.join(UNLABELLED_PARTITIONS)}")


def _builder(models, name: str) -> Callable | None:
    try:
        return models.get(name)
    except Exception:   # a lazily declared entry whose module cannot import here
        return None
