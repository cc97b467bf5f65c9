"""Language models: the GPT is causal and tied, text splits by position, partitions, tokenizers,
the LM metrics against a hand evaluation, and bad model/dataset pairs refused in one line."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import make_cfg, run_training
from torch.nn import functional as F

from distlib.data import DATASETS, partition
from distlib.data.text import ByteTokenizer, CharTokenizer, python_docs
from distlib.errors import ConfigError
from distlib.lm_metrics import unigram_entropy
from distlib.models import MODELS

QUIET = ("log.progress=false", "log.tensorboard=false", "checkpoint.enabled=false")
#: a GPT small enough for tests on 2 shared cores
TINY_GPT = ("model=gpt", "model.n_layer=1", "model.n_head=2", "model.n_embd=16", "model.block_size=16",
            "dataset=text", "dataset.block_size=16")


def _unique_corpus(tmp_path, n: int = 3000) -> tuple[str, str]:
    """A text whose every character is distinct and increasing, so a char token's id is its position."""
    text = "".join(chr(0x4E00 + i) for i in range(n))
    path = tmp_path / "unique.txt"
    path.write_text(text, encoding="utf-8")
    return text, str(path)


def test_gpt_is_causal():
    """The logits at position t do not change when the tokens after t change."""
    torch.manual_seed(0)
    model = MODELS.build("gpt", {"n_layer": 2, "n_head": 2, "n_embd": 16, "block_size": 12}, input_shape=(12,),
                         num_classes=20).eval()
    x = torch.randint(0, 20, (3, 12))
    out = model(x)
    for t in (0, 5, 10):
        y = x.clone()
        y[:, t + 1:] = torch.randint(0, 20, (3, 12 - t - 1))
        assert not torch.equal(y[:, t + 1:], x[:, t + 1:])
        out2 = model(y)
        torch.testing.assert_close(out2[:, :t + 1], out[:, :t + 1], rtol=0, atol=1e-6)
        assert not torch.allclose(out2[:, t + 1:], out[:, t + 1:])     # and later positions do see them


def test_gpt_embeddings_are_tied_and_counted_once():
    model = MODELS.build("gpt", {"n_layer": 1, "n_head": 2, "n_embd": 8, "block_size": 4}, input_shape=(4,),
                         num_classes=10)
    assert model.lm_head.weight is model.tok_emb.weight
    unique = sum(p.numel() for p in model.parameters())
    per_module = sum(p.numel() for m in model.modules() for p in m.parameters(recurse=False))
    assert per_module - unique == 10 * 8      # the shared matrix appears twice by module, once as a parameter


def test_gpt_refuses_windows_longer_than_its_context():
    with pytest.raises(ConfigError, match=r"^model.block_size: 8 is shorter than the dataset's windows"):
        MODELS.build("gpt", {"block_size": 8}, input_shape=(16,), num_classes=10)


def test_tokenizers_round_trip():
    text = "def f(x):\n    return x ** 2  # naïve — ∑ 😀\n"
    char = CharTokenizer(text)
    assert char.decode(char.encode(text)) == text
    assert char.vocab_size == len(set(text))
    byte = ByteTokenizer()
    ids = byte.encode(text)
    assert byte.decode(ids) == text and len(ids) == len(text.encode("utf-8")) and ids.max() < 256


def test_text_parts_are_consecutive_stretches_by_position(tmp_path):
    """Train, validation and test are the text's first, middle and last stretches, and every
    window each part yields stays inside it (a token's id is its position here)."""
    text, path = _unique_corpus(tmp_path)
    ds = DATASETS.build("text", {"path": path, "block_size": 8, "val_fraction": 0.1, "test_fraction": 0.2})
    n_val, n_test = int(3000 * 0.1), int(3000 * 0.2)
    n_train = 3000 - n_val - n_test
    parts = [ds.train.tokens, ds.val.tokens, ds.test.tokens]
    assert [len(p) for p in parts] == [n_train, n_val, n_test]
    torch.testing.assert_close(torch.cat(parts), torch.arange(3000))
    for x, y in ds.val.eval_batches(7):     # validation: inside [n_train, n_train + n_val)
        assert x.min() >= n_train and y.max() < n_train + n_val
        torch.testing.assert_close(y, x + 1)
    for x, y in ds.test.eval_batches(7):    # test: inside [n_train + n_val, 3000)
        assert x.min() >= n_train + n_val and y.max() < 3000
    seen = torch.cat([y for _, y in ds.val.eval_batches(1000)]).flatten()
    assert len(set(seen.tolist())) == len(seen)     # every validation token predicted at most once
    stream = ds.train.batches(np.arange(len(ds.train)), 16, seed=1)
    for _ in range(50):
        x, y = stream.next()
        assert x.shape == (16, 8) and y.max() < n_train
        torch.testing.assert_close(y, x + 1)    # y is x shifted by one position


def test_contiguous_partition_gives_each_worker_its_own_range(tmp_path):
    text, path = _unique_corpus(tmp_path)
    ds = DATASETS.build("text", {"path": path, "block_size": 8})
    shards = partition(ds.train.labels(), 4, "contiguous")
    assert np.array_equal(np.concatenate(shards), np.arange(len(ds.train)))    # disjoint and covering
    assert all(np.array_equal(s, np.arange(s[0], s[-1] + 1)) for s in shards)   # each a range
    for r, s in enumerate(shards):
        stream = ds.train.batches(s, 8, seed=r)
        starts = torch.cat([stream.next()[0][:, 0] for _ in range(40)])
        # a window starts inside the worker's own chunks
        assert starts.min() >= s[0] * 8 and starts.max() < (s[-1] + 1) * 8
    iid = partition(ds.train.labels(), 4, "iid", seed=3)
    assert np.array_equal(np.sort(np.concatenate(iid)), np.arange(len(ds.train)))
    assert not all(np.array_equal(s, np.arange(s[0], s[-1] + 1)) for s in iid)   # IID shards are scattered


def test_default_corpus_is_the_python_docs():
    import pydoc_data.topics
    text = python_docs()
    assert len(text) > 100_000 and text.startswith(pydoc_data.topics.topics[sorted(pydoc_data.topics.topics)[0]])
    ds = DATASETS.build("text", {})
    assert ds.num_classes == len(set(text)) and ds.task == "language_model"


@pytest.mark.slow
def test_lm_metrics_equal_a_hand_evaluation(tmp_path):
    """Validation loss, perplexity, bits per character and next-token accuracy in summary.json
    equal an evaluation written here over the validation windows (and the test loss over the
    test windows), with the byte tokenizer (where bits per character differ from bits per token)."""
    text = ("Ünïcode façade — naïve café; " * 40) + "plain ascii tail " * 40
    path = tmp_path / "t.txt"
    path.write_text(text, encoding="utf-8")
    cfg = make_cfg(*QUIET, *TINY_GPT, f"dataset.path={path}", "dataset.tokenizer=byte", "dataset.val_fraction=0.2",
                   "algorithm=allreduce_sgd", "workers=2", "batch_size=4", "max_steps=3", "log.tensorboard=true")
    trainer, summary = run_training(cfg, tmp_path / "run")
    final = summary["final"]
    model = trainer.workers[0].model.eval()
    T = 16

    def by_hand(data: torch.Tensor) -> tuple[float, float]:
        loss_sum, correct, count = 0.0, 0, 0
        with torch.no_grad():
            for s in range(0, len(data) - T, T):    # consecutive windows, the last one full
                x, y = data[s:s + T][None], data[s + 1:s + T + 1][None]
                out = model(x)
                loss_sum += float(F.cross_entropy(out[0], y[0], reduction="sum"))
                correct += int((out.argmax(-1) == y).sum())
                count += T
        return loss_sum / count, correct / count
    data = trainer.dataset.val.tokens
    val, val_acc = by_hand(data)
    assert final["val_loss"] == pytest.approx(val, rel=1e-5)
    assert final["val_accuracy"] == pytest.approx(val_acc, abs=1e-12)
    assert final["test_loss"] == pytest.approx(by_hand(trainer.dataset.test.tokens)[0], rel=1e-5)
    assert final["perplexity"] == pytest.approx(math.exp(val), rel=1e-5)
    raw = bytes(data.tolist())
    chars = len(raw) - sum(1 for b in raw if b & 0xC0 == 0x80)      # UTF-8 lead bytes
    assert final["bits_per_char"] == pytest.approx(val / math.log(2) * len(raw) / chars, rel=1e-5)
    assert final["tokens_per_s"] > 0
    assert {"perplexity", "bits_per_char", "tokens_per_s"} <= set(summary["history"][-1])
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(tmp_path / "run" / "tb"))
    acc.Reload()
    assert acc.Scalars("test/perplexity")[-1].value == pytest.approx(final["perplexity"], rel=1e-6)
    assert {"test/bits_per_char", "time/tokens_per_s"} <= set(acc.Tags()["scalars"])


def test_unigram_entropy_against_counting():
    tokens = np.array([0, 0, 1, 2, 2, 2, 2, 3])
    p = np.array([2, 1, 4, 1]) / 8
    assert unigram_entropy(tokens, 5) == pytest.approx(float(-(p * np.log(p)).sum()), rel=1e-12)


# -- pairs that cannot work --------------------------------------------------------------------
BAD_PAIRS = [
    (("dataset=synthetic", "model=cnn"), "model: cnn takes images (C, H, W) but dataset synthetic gives vectors"),
    pytest.param(("dataset=text", "model=cnn"), "model: cnn takes images (C, H, W) but dataset text gives token "
                 "sequences", marks=pytest.mark.slow),
    pytest.param(("dataset=text", "model=mlp"), "model: mlp takes images (C, H, W) or signals (C, L) or vectors "
                 "(D,) but dataset text gives", marks=pytest.mark.slow),
    pytest.param(("dataset=mnist1d", "model=cnn"), "model: cnn takes images (C, H, W) but dataset mnist1d gives "
                 "signals (C, L) of shape (1, 40); models for this dataset: cnn1d, mlp", marks=pytest.mark.slow),
    (("dataset=mnist", "model=gpt"), "model: gpt takes token sequences (text) but dataset mnist gives images"),
    pytest.param(("dataset=synthetic_regression", "model=gpt"), "model: gpt takes token sequences (text) but "
                 "dataset synthetic_regression gives vectors", marks=pytest.mark.slow),
    pytest.param(("dataset=text", "model=gpt", "dataset.partition=shards"),
                 "dataset.partition: shards splits by class", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("overrides,expected", BAD_PAIRS, ids=lambda o: " ".join(o) if isinstance(o, tuple) else "")
def test_a_pair_that_cannot_work_is_refused_in_one_line(tmp_path, monkeypatch, capsys, overrides, expected):
    """Through the command line's entry point: exit status 2, one line naming both."""
    import sys

    from distlib import cli
    monkeypatch.setattr(sys, "argv", ["distlib-train", *overrides, *QUIET, f"hydra.run.dir={tmp_path}/run"])
    with pytest.raises(SystemExit) as e:
        cli.main()
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0], err
    assert not (tmp_path / "run" / "summary.json").exists()     # refused before any work


# -- every algorithm learns the language (slow) -----------------------------------------------------
#: every shipped algorithm with its defaults; the asynchronous ones with a modelled step time
#: (reproducible); CHOCO-SGD with compression
ALGORITHMS = [
    ["algorithm=dpsgd"], ["algorithm=allreduce_sgd"], ["algorithm=local_sgd"], ["algorithm=matcha"],
    ["algorithm=al_dsgd"], ["algorithm=choco_sgd", "compression=topk", "compression.ratio=0.1"],
    ["algorithm=sgp"], ["algorithm=diloco"], ["algorithm=gradient_tracking"],
    ["algorithm=async_ps", "cluster.step_time_s=0.01"], ["algorithm=ad_psgd", "cluster.step_time_s=0.01"],
]


@pytest.fixture(scope="module")
def default_run_steps() -> tuple[int, float]:
    """The default LM run's steps (model=gpt dataset=text, every other value its default) and
    the unigram entropy of the whole default corpus (nats per character)."""
    from distlib.trainer import Trainer
    ds = DATASETS.build("text", {})
    tokens = torch.cat([ds.train.tokens, ds.val.tokens, ds.test.tokens]).numpy()
    t = Trainer(make_cfg(*QUIET, "model=gpt", "dataset=text"), "/nonexistent/never-written")
    return t.total_steps, unigram_entropy(tokens, ds.num_classes)


@pytest.mark.slow
@pytest.mark.parametrize("algo", ALGORITHMS, ids=lambda a: a[0].split("=")[1])
def test_every_algorithm_learns_below_the_unigram_entropy(tmp_path, default_run_steps, algo):
    """On the default corpus, the averaged model's validation loss falls below the corpus'
    unigram entropy (the best loss without context) within the default run's steps, for every
    shipped algorithm with its defaults (the run's own defaults too: SGD, lr 0.05, momentum
    0.9), here with a tiny GPT on 4 workers and 60 steps."""
    steps, entropy = default_run_steps
    cfg = make_cfg(*QUIET, *TINY_GPT, *algo, "workers=4", "batch_size=16", "max_steps=60", "eval.per_worker=false")
    assert cfg.max_steps <= steps
    _, summary = run_training(cfg, tmp_path)
    assert summary["final"]["val_loss"] < entropy, (summary["final"], entropy)


@pytest.mark.slow
def test_compare_reports_validation_loss_and_perplexity(tmp_path):
    """distlib-compare on language-model runs: the val loss and perplexity columns equal the
    seeds' means read from the summaries, and the loss-against-bytes figures are written."""
    from distlib.compare import compare
    finals: dict[str, list[dict]] = {}
    for algo in ("allreduce_sgd", "local_sgd"):
        for seed in (0, 1):
            cfg = make_cfg(*QUIET, *TINY_GPT, f"algorithm={algo}", f"seed={seed}", "workers=2", "batch_size=4",
                           "max_steps=4", "eval_every=2")
            _, summary = run_training(cfg, tmp_path / "runs" / f"{algo}{seed}")
            finals.setdefault(algo, []).append(summary["final"])
    res = compare([tmp_path / "runs"], tmp_path / "report", target=0.5)
    table = {r["algorithm"].split()[0]: r for r in json.loads((tmp_path / "report" / "table.json").read_text())}
    for algo, runs in finals.items():
        for key, col in (("val_loss", "final_val_loss"), ("perplexity", "final_perplexity")):
            vals = np.array([f[key] for f in runs])
            assert table[algo][col]["mean"] == pytest.approx(vals.mean(), rel=1e-12)
            assert table[algo][col]["std"] == pytest.approx(vals.std(ddof=1), rel=1e-9)
    assert "final perplexity" in (tmp_path / "report" / "table.md").read_text()
    names = {p.name for p in res["figures"]}
    assert "final_val_loss_vs_mb.png" in names and any(n.endswith("__val_loss.png") for n in names)


@pytest.mark.slow
def test_resumed_language_model_run_equals_uninterrupted(tmp_path, monkeypatch):
    """A crash at step 5 and ``resume=true``: the same parameters and history (the text
    windows' stream, dropout's RNG and AdamW's moments all come back from the checkpoint)."""
    from distlib.worker import Worker
    overrides = (*QUIET, *TINY_GPT, "model.dropout=0.1", "optim=adamw", "workers=2", "batch_size=4", "max_steps=7",
                 "eval_every=3", "checkpoint.enabled=true", "checkpoint.every=2", "algorithm=dpsgd",
                 "cluster.step_time_s=0.01")
    whole, whole_summary = run_training(make_cfg(*overrides), tmp_path / "whole")
    original, seen = Worker.forward_backward, {"n": 0}

    def crash(self):
        if self.rank == 1:
            seen["n"] += 1
            if seen["n"] == 6:
                raise RuntimeError("injected crash at step 5")
        return original(self)
    monkeypatch.setattr(Worker, "forward_backward", crash)
    with pytest.raises(RuntimeError, match="injected"):
        run_training(make_cfg(*overrides), tmp_path / "split")
    monkeypatch.undo()
    resumed, summary = run_training(make_cfg(*overrides, "resume=true"), tmp_path / "split")
    for r, w in whole.workers.items():
        assert torch.equal(w.flat_params(), resumed.workers[r].flat_params()), f"worker {r}"
    timeless = [[{k: v for k, v in h.items() if k not in ("wall_s", "tokens_per_s")} for h in s["history"]]
                for s in (whole_summary, summary)]
    assert timeless[0] == timeless[1] and len(timeless[0]) == 3
