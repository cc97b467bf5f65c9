"""The bad-input table: every config group's fields, and the files and directories a run
names, each wrong in a way a user could write. Every row goes through the real entry point (in
this process, so the table stays fast) and must stop before any work with exit status 2 and
ONE line on stderr, the row's expected line, and no traceback."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterator

import pytest
from support import cli_in_process

#: small and quick where a row does not choose otherwise (a row's own key replaces these)
BASE = {"dataset": "synthetic", "dataset.samples": "800", "model": "mlp", "model.hidden": "[16]",
        "max_steps": "2", "log.progress": "false", "log.tensorboard": "false"}
#: what a row's group choice brings along that BASE must then leave out
_DROPS = {"dataset": ("dataset.samples",), "model": ("model.hidden",)}

# (overrides, the line on stderr after "config error: "), by group; {dir} is the test's tmp dir
ROWS: list[tuple[list[str], str]] = [
    # -- top level -----------------------------------------------------------------------------
    (["workers=0"], "workers: must be an integer >= 1 or null, got 0"),
    (["workers=two"], "workers: must be an integer >= 1 or null, got 'two'"),
    (["seed=-1"], "seed: must be an integer >= 0, got -1"),
    (["epochs=0"], "epochs: must be an integer >= 1, got 0"),
    (["max_steps=0"], "max_steps: must be an integer >= 1 or null, got 0"),
    (["batch_size=0"], "batch_size: must be an integer >= 1, got 0"),
    (["batch_size=2.5"], "batch_size: must be an integer >= 1, got 2.5"),
    (["eval_every=0"], "eval_every: must be an integer >= 1 or null, got 0"),
    (["init=random"], "init: unknown 'random'; allowed: same, per_worker"),
    (["imports=[no_such_module_x]"], "imports: cannot import 'no_such_module_x': No module named 'no_such_module_x'"),
    (["resume=3"], "resume: must be true (the latest checkpoint), auto (the latest if any), a checkpoint path, or "
                   "null, got 3"),
    (["resume=true"], "resume=true: no complete checkpoint in {dir}/run/checkpoints; run once with checkpointing on, "
                      "or give resume=PATH"),
    (["resume={dir}/nowhere"], "resume: no complete checkpoint at {dir}/nowhere (give a step_N directory, a "
                               "checkpoints directory, or a run directory)"),
    (["device=tpu"], "device: unknown 'tpu'; allowed: auto, cpu, cuda"),
    (["precision=64"], "precision: unknown 64; allowed: 32, bf16-mixed, 16-mixed"),
    (["compile=maybe"], "compile: must be true or false, got 'maybe'"),
    (["deterministic=1"], "deterministic: must be true or false, got 1"),
    (["comm.dtype=int8"], "comm.dtype: unknown 'int8'; allowed: float32, bfloat16, float16"),
    (["lrr=0.1"], "lrr: unknown config key; the keys are: "),
    (["+wokers=4"], "wokers: unknown config key; did you mean 'workers'?"),
    # -- optim -------------------------------------------------------------------------------------
    (["optim.lr=0"], "optim.lr: must be > 0, got 0"),
    (["optim.lr=-0.1"], "optim.lr: must be > 0, got -0.1"),
    (["optim.lr=inf"], "optim.lr: must be a finite number > 0, got inf"),
    (["optim.lr=nan"], "optim.lr: must be a finite number > 0, got nan"),
    (["optim.lr=fast"], "optim.lr: must be a number > 0, got 'fast'"),
    (["optim.momentum=1.5"], "optim.momentum: must be >= 0 and < 1, got 1.5"),
    (["optim.momentum=-0.1"], "optim.momentum: must be >= 0 and < 1, got -0.1"),
    (["optim.weight_decay=-1"], "optim.weight_decay: must be >= 0, got -1"),
    (["optim.nesterov=yes"], "optim.nesterov: must be true or false, got 'yes'"),
    (["optim.nesterov=true", "optim.momentum=0"], "optim.nesterov: needs optim.momentum > 0 (Nesterov is a form of "
                                                  "momentum)"),
    (["optim.milestones=[-1]"], "optim.milestones: must be a list of numbers >= 0, got [-1]"),
    (["optim.milestones=3"], "optim.milestones: must be a list of numbers >= 0, got 3"),
    (["optim.gamma=0"], "optim.gamma: must be > 0, got 0"),
    (["optim.lrr=0.1"], "optim.lrr: unknown config key; did you mean 'optim.lr'?"),
    (["optim=rmsprop"], "optim: unknown option 'rmsprop'; available: adam, adamw, sgd"),
    (["optim._target_=torch.optim.Nope"], "optim._target_: cannot import 'torch.optim.Nope'"),
    (["optim._partial_=false"], "optim._partial_: must be true (each worker gives the optimizer its own parameters)"),
    (["optim.decay_bias_and_norm=sometimes"], "optim.decay_bias_and_norm: must be true or false, got 'sometimes'"),
    (["optim.schedule=exp"], "optim.schedule: unknown 'exp'; allowed: step, constant, cosine, linear"),
    (["optim.warmup_steps=-1"], "optim.warmup_steps: must be an integer >= 0, got -1"),
    (["optim.min_lr=-1"], "optim.min_lr: must be >= 0, got -1"),
    (["optim.schedule=cosine", "optim.min_lr=1"], "optim.min_lr: must be <= optim.lr (0.05) for schedule=cosine, got 1"),
    (["optim.clip_grad_norm=0"], "optim.clip_grad_norm: must be > 0 or null, got 0"),
    (["optim=adam", "optim.betas=[0.9,1.5]"], "optim.betas: must be a list of numbers >= 0 and < 1, got [0.9, 1.5]"),
    (["optim=adam", "optim.eps=0"], "optim.eps: must be > 0, got 0"),
    (["optim=adamw", "optim.weight_decay=-0.01"], "optim.weight_decay: must be >= 0, got -0.01"),
    (["optim=adam", "optim.momentum=0.9"], "optim.momentum: unknown config key; "),
    (["accumulate=0"], "accumulate: must be an integer >= 1, got 0"),
    # -- network ----------------------------------------------------------------------------------
    (["network.latency_ms=-1"], "network.latency_ms: must be >= 0, got -1"),
    (["network.bandwidth_mbps=0"], "network.bandwidth_mbps: must be > 0 or null, got 0"),
    (["network.bandwidth_mbps=inf"], "network.bandwidth_mbps: must be a finite number > 0 or null, got inf"),
    (["workers=4", "network.nodes=[{rank:9,latency_ms:1}]"], "network.nodes[0].rank: must be a rank < 4 (the run's "
                                                             "workers), got 9"),
    (["workers=4", "network.nodes=[{latency_ms:1}]"], "network.nodes[0]: needs rank and optionally latency_ms, "
                                                      "bandwidth_mbps; got {'latency_ms': 1}"),
    (["workers=4", "network.nodes=[{rank:-1}]"], "network.nodes[0].rank: must be a worker rank (an integer >= 0), "
                                                 "got -1"),
    (["workers=4", "network.links=[{src:0,dst:7}]"], "network.links[0].dst: must be a rank < 4 (the run's workers), "
                                                     "got 7"),
    (["workers=4", "network.links=[{src:5,dst:1}]"], "network.links[0].src: must be a rank < 4 (the run's workers), "
                                                     "got 5"),
    (["workers=4", "network.links=[{src:0}]"], "network.links[0]: needs src, dst and optionally latency_ms, "
                                               "bandwidth_mbps; got {'src': 0}"),
    (["workers=4", "network.links=[{src:0,dst:1,latency_ms:-5}]"], "network.links[0].latency_ms: must be a number "
                                                                   ">= 0, got -5"),
    (["network=lan"], "network: unknown option 'lan'; available: gigabit, ideal, slow_node, wan"),
    # -- cluster ----------------------------------------------------------------------------------
    (["workers=4", "cluster.speeds=[1,2]"], "cluster.speeds: needs one speed per worker (4), got 2"),
    (["workers=2", "cluster.speeds=[1,0]"], "cluster.speeds: must be a list of numbers > 0 or null, got [1, 0]"),
    (["cluster.seed=-1"], "cluster.seed: must be an integer >= 0, got -1"),
    (["cluster.slowdown_prob=1.5"], "cluster.slowdown_prob: must be >= 0 and <= 1, got 1.5"),
    (["cluster.slowdown_factor=0.5"], "cluster.slowdown_factor: must be >= 1, got 0.5"),
    (["cluster.step_time_s=0"], "cluster.step_time_s: must be > 0 or null, got 0"),
    (["cluster.speed_dist=3"], "cluster.speed_dist: must be a group of options or null, got 3"),
    # -- dataset ----------------------------------------------------------------------------------
    (["dataset.test_fraction=0"], "dataset.test_fraction: must be > 0 and < 1, got 0"),
    (["dataset.test_fraction=1"], "dataset.test_fraction: must be > 0 and < 1, got 1"),
    (["dataset.split_seed=-2"], "dataset.split_seed: must be an integer >= 0, got -2"),
    (["dataset.partition=random"], "dataset.partition: unknown 'random'; allowed: iid, dirichlet, shards"),
    (["dataset.alpha=0"], "dataset.alpha: must be > 0, got 0"),
    (["dataset.shards_per_worker=0"], "dataset.shards_per_worker: must be an integer >= 1, got 0"),
    (["+dataset.sample_with_replacement=maybe"], "dataset.sample_with_replacement: must be true or false, got "
                                                  "'maybe'"),
    (["dataset.sample_with_replacement=true"], "dataset.sample_with_replacement: off unless added, so it is added, "
                                               "not overridden: write +dataset.sample_with_replacement=true"),
    (["workers=1024"], "dataset.partition: worker 640 received no samples (640 training samples over 1024 "
                       "workers); use fewer workers or more data"),
    (["workers=32"], "batch_size: 32 is larger than worker 0's shard of 20 samples (640 training samples over 32 "
                     "workers); use fewer workers, a smaller batch_size or more data, or add "
                     "+dataset.sample_with_replacement=true to repeat samples within a batch"),
    (["+dataset.val_fraction=1"], "dataset.val_fraction: must be >= 0 and < 1, got 1"),
    (["+dataset.val_fraction=-0.1"], "dataset.val_fraction: must be >= 0 and < 1, got -0.1"),
    (["dataset.val_fraction=0.1"], "dataset.val_fraction: off unless added, so it is added, not overridden: write "
                                   "+dataset.val_fraction=0.1"),
    (["dataset=mnist1d", "dataset.samples=10"], "dataset.samples: must be >= 20 (two per class), got 10"),
    (["dataset.samples=1"], "dataset: synthetic needs samples >= 2, dim >= 1, classes >= 2"),
    (["dataset.classes=1"], "dataset: synthetic needs samples >= 2, dim >= 1, classes >= 2"),
    (["dataset.dimm=3"], "dataset.dimm: unknown config key; did you mean 'dataset.dim'?"),
    (["dataset=imagenet"], "dataset: unknown option 'imagenet'; available: cifar10, cifar100, fashion_mnist, "
                           "imagefolder, mnist, mnist1d, mnist_full, synthetic, synthetic_regression"),
    (["dataset.name=nope"], "dataset: unknown dataset 'nope'; available: "),
    (["dataset=imagefolder"], "dataset.root: imagefolder needs the folder of images; set dataset.root=DIR"),
    (["dataset=imagefolder", "dataset.root={dir}/nowhere"], "dataset.root: {dir}/nowhere is not a folder"),
    (["dataset=imagefolder", "dataset.root={dir}/images", "dataset.image_size=0"],
     "dataset.image_size: must be >= 1, got 0"),
    (["dataset=imagefolder", "dataset.root={dir}/images", "dataset.num_workers=-1"],
     "dataset.num_workers: must be >= 0, got -1"),
    (["dataset=imagefolder", "dataset.root={dir}/images", "dataset.mean=[0.5]"],
     "dataset.mean: must be 3 numbers (one per RGB channel), got [0.5]"),
    (["dataset=imagefolder", "dataset.root={dir}/images", "dataset.std=[1,0,1]"],
     "dataset.std: must be 3 numbers (one per RGB channel), all > 0, got [1.0, 0.0, 1.0]"),
    (["dataset=imagefolder", "dataset.root={dir}/not_images"], "dataset.root: {dir}/not_images/cat/notes.png is not a "
                                                               "readable image; remove or replace it"),
    # -- compression ------------------------------------------------------------------------------
    (["compression.name=zip"], "compression.name: unknown 'zip'; allowed: none, topk, randomk, qsgd, sign"),
    (["compression=zip"], "compression: unknown option 'zip'; available: none, qsgd, randomk, sign, topk"),
    (["compression=topk"], "compression: topk needs an algorithm that compresses its messages (choco_sgd); "
                           "algorithm=dpsgd sends them whole"),
    (["algorithm=choco_sgd", "compression=topk", "compression.ratio=0"], "compression.ratio: must be > 0 and <= 1, "
                                                                         "got 0"),
    (["algorithm=choco_sgd", "compression=topk", "compression.ratio=2"], "compression.ratio: must be > 0 and <= 1, "
                                                                         "got 2"),
    (["algorithm=choco_sgd", "compression=qsgd", "compression.bits=1"], "compression.bits: must be an integer >= 2 "
                                                                        "and <= 8, got 1"),
    (["algorithm=choco_sgd", "compression=qsgd", "compression.bits=9"], "compression.bits: must be an integer >= 2 "
                                                                        "and <= 8, got 9"),
    # -- checkpoint -------------------------------------------------------------------------------
    (["checkpoint.enabled=sometimes"], "checkpoint.enabled: must be true or false, got 'sometimes'"),
    (["checkpoint.every=0"], "checkpoint.every: must be an integer >= 1 or null, got 0"),
    (["checkpoint.every=often"], "checkpoint.every: must be an integer >= 1 or null, got 'often'"),
    (["checkpoint.epoch_end=1"], "checkpoint.epoch_end: must be true or false, got 1"),
    (["checkpoint.keep=0"], "checkpoint.keep: must be an integer >= 1, got 0"),
    (["checkpoint.dir={dir}/a_file"], "checkpoint.dir: {dir}/a_file is a file, not a directory; give a directory"),
    (["checkpoint.dir={dir}/a_file/ckpts"], "checkpoint.dir: {dir}/a_file/ckpts cannot be made: {dir}/a_file is a "
                                            "file, not a directory; give a directory"),
    # -- eval, log --------------------------------------------------------------------------------
    (["eval.per_worker=often"], "eval.per_worker: must be true or false, got 'often'"),
    (["eval.per_worker_sample=0"], "eval.per_worker_sample: must be an integer >= 1 or null, got 0"),
    (["workers=4", "eval.per_worker_sample=10"], "eval.per_worker_sample: must be <= workers (4) or null (all), got 10"),
    (["log.tensorboard=on"], "log.tensorboard: must be true or false, got 'on'"),
    (["log.progress=2"], "log.progress: must be true or false, got 2"),
    (["log.every_n_steps=0"], "log.every_n_steps: must be an integer >= 1 or null, got 0"),
    # -- algorithm --------------------------------------------------------------------------------
    (["algorithm=nope"], "algorithm: unknown option 'nope'; available: "),
    (["algorithm.name=nope"], "algorithm: unknown algorithm 'nope'; available: "),
    (["algorithm.form=both"], "algorithm.form: unknown 'both'; allowed: "),
    (["algorithm.weights=nope"], "algorithm.weights: unknown 'nope'; allowed: metropolis"),
    (["+algorithm.bogus=1"], "algorithm.bogus: unknown option; allowed: "),
    (["algorithm.alpha=0"], "algorithm.alpha: a number > 0 used with weights=laplacian, got 0"),
    (["algorithm=matcha", "algorithm.budget=0"], "algorithm.budget: must be a number > 0 and <= 1, got 0"),
    (["algorithm=matcha", "algorithm.budget=1.5"], "algorithm.budget: must be a number > 0 and <= 1, got 1.5"),
    (["algorithm=matcha", "algorithm.tol=1"], "algorithm.tol: must be a number > 0 and < 1, got 1"),
    (["algorithm=local_sgd", "algorithm.period=0"], "algorithm.period: must be an integer >= 1, got 0"),
    (["algorithm=diloco", "algorithm.H=0"], "algorithm.H: must be an integer >= 1, got 0"),
    (["algorithm=diloco", "algorithm.outer_lr=inf"], "algorithm.outer_lr: must be a finite number > 0, got inf"),
    (["algorithm=diloco", "algorithm.outer_momentum=1"], "algorithm.outer_momentum: must be a number >= 0 and < 1, "
                                                         "got 1"),
    (["algorithm=choco_sgd", "algorithm.gamma=0"], "algorithm.gamma: must be a number in (0, 1] or auto, got 0"),
    (["algorithm=sgp", "algorithm.overlap=-1"], "algorithm.overlap: must be an integer >= 0, got -1"),
    (["algorithm=sgp", "algorithm.graph=ring"], "algorithm.graph: unknown 'ring'; allowed: "),
    (["algorithm=allreduce_sgd", "algorithm.bucket_mb=0"], "algorithm.bucket_mb: must be a number > 0, got 0"),
    (["algorithm=al_dsgd", "algorithm.period=0"], "algorithm.period: must be an integer >= 1, got 0"),
    (["algorithm=async_ps", "algorithm.staleness_scaling=cubic"], "algorithm.staleness_scaling: unknown 'cubic'; "
                                                                  "allowed: "),
    (["algorithm.wieght=1"], "algorithm.wieght: unknown config key; did you mean 'algorithm.weights'?"),
    # -- topology ---------------------------------------------------------------------------------
    (["topology=nope"], "topology: unknown option 'nope'; available:"),
    (["topology.name=nope"], "topology: unknown topology 'nope'; available:"),
    (["topology=edge_list", "workers=4"], "topology.path: edge_list needs a file"),
    (["topology=edge_list", "workers=4", "topology.path={dir}/missing.txt"], "topology.path: file '{dir}/missing.txt' "
                                                                             "does not exist"),
    (["topology=edge_list", "workers=4", "topology.path={dir}/three_nodes.txt"], "topology.path: {dir}/three_nodes.txt describes 3 nodes but workers=4; they must be equal"),
    (["topology=edge_list", "workers=4", "topology.path={dir}/two_pieces.txt"],
     "topology: graph edge_list:two_pieces.txt is not connected; decentralized training needs a connected graph"),
    (["topology=erdos_renyi", "topology.p=0"], "topology.p: "),
    (["topology=erdos_renyi", "topology.p=1.5"], "topology.p: "),
    (["topology=schedule", "topology.every=0"], "topology.every: "),
    # -- model ------------------------------------------------------------------------------------
    (["model.hidden=[0]"], "model.hidden[0]: must be an integer >= 1, got 0"),
    (["model.hidden=[16,-4]"], "model.hidden[1]: must be an integer >= 1, got -4"),
    (["model.dropout=1.5"], "model.dropout: must be a number >= 0 and < 1, got 1.5"),
    (["model.dropout=1"], "model.dropout: must be a number >= 0 and < 1, got 1"),
    (["model.dropout=-0.1"], "model.dropout: must be a number >= 0 and < 1, got -0.1"),
    (["model=cnn", "dataset=mnist", "model.hidden=0"], "model.hidden: must be an integer >= 1, got 0"),
    (["model=cnn", "dataset=mnist", "model.dropout=1.5"], "model.dropout: must be a number >= 0 and < 1, got 1.5"),
    (["model=cnn", "dataset=mnist", "model.channels=[16]"], "model.channels: must be two integers >= 1, got [16]"),
    (["model=cnn"], "model: cnn takes images (C, H, W) but dataset synthetic gives vectors (D,) of shape (20,); "
                    "models for this dataset: mlp"),
    (["model=nope"], "model: unknown option 'nope'; available:"),
    (["model.name=nope"], "model: unknown model 'nope'; available:"),
    (["model.hiddn=[8]"], "model.hiddn: unknown config key; did you mean 'model.hidden'?"),
    # -- language models (model=gpt, dataset=text) --------------------------------------------------
    (["dataset=text", "model=gpt", "model.n_layer=0"], "model.n_layer: must be an integer >= 1, got 0"),
    (["dataset=text", "model=gpt", "model.n_head=3"], "model.n_embd: must be a multiple of model.n_head (3), got 64"),
    (["dataset=text", "model=gpt", "model.n_embd=0"], "model.n_embd: must be an integer >= 1, got 0"),
    (["dataset=text", "model=gpt", "model.dropout=1"], "model.dropout: must be a number >= 0 and < 1, got 1"),
    (["dataset=text", "model=gpt", "model.block_size=8"], "model.block_size: 8 is shorter than the dataset's windows "
                                                          "(dataset.block_size=64); set model.block_size >= 64"),
    (["dataset=text", "model=gpt", "dataset.tokenizer=word"], "dataset.tokenizer: unknown 'word'; allowed: char, byte"),
    (["dataset=text", "model=gpt", "dataset.path={dir}/none.txt"],
     "dataset.path: file '{dir}/none.txt' does not exist"),
    (["dataset=text", "model=gpt", "dataset.block_size=0"], "dataset.block_size: must be an integer >= 1, got 0"),
    (["dataset=text", "model=gpt", "dataset.partition=dirichlet"],
     "dataset.partition: dirichlet splits by class, and dataset text has none; allowed: iid, contiguous"),
    (["dataset=text", "model=mlp"], "model: mlp takes images (C, H, W) or signals (C, L) or vectors (D,) but dataset "
                                    "text gives token sequences (text) of shape (64,); models for this dataset: gpt"),
    (["dataset=mnist", "model=gpt"], "model: gpt takes token sequences (text) but dataset mnist gives images"),
    # -- backend ----------------------------------------------------------------------------------
    (["backend=mpi"], "backend: unknown option 'mpi'; available: sim, torch"),
    (["backend=torch"], "backend: torch needs the torchrun environment"),
    # -- faults -----------------------------------------------------------------------------------
    (["faults=meteor"], "faults: unknown option 'meteor'; available: churn, crash, links, none"),
    (["faults=crash", "faults.name=meteor"], "faults.name: unknown 'meteor'; allowed: none, crash, churn, links"),
    (["faults.p_drop=0.1"], "faults.p_drop: no faults group chosen; choose one first: faults=crash, churn or links"),
    (["faults=crash", "faults.seed=-1"], "faults.seed: must be an integer >= 0 or null, got -1"),
    (["faults=crash", "workers=4", "faults.ranks=[9]"], "faults.ranks: rank 9 is outside 0..3 (4 workers)"),
    (["faults=crash", "faults.fraction=0"], "faults.fraction: must be > 0 and <= 1 or null, got 0"),
    (["faults=crash", "faults.at_step=-1"], "faults.at_step: must be an integer >= 0, got -1"),
    (["faults=crash", "faults.down_steps=0"], "faults.down_steps: must be an integer >= 1 or null, got 0"),
    (["faults=crash", "faults.rejoin=copy"], "faults.rejoin: unknown 'copy'; allowed: stale, neighbor, average"),
    (["faults=crash", "faults.detect_s=-1"], "faults.detect_s: must be >= 0, got -1"),
    (["faults=churn", "faults.p_leave=1.5"], "faults.p_leave: must be >= 0 and <= 1, got 1.5"),
    (["faults=churn", "faults.mean_down_steps=0.5"], "faults.mean_down_steps: must be >= 1, got 0.5"),
    (["faults=churn", "faults.max_down=0"], "faults.max_down: must be an integer >= 1 or null, got 0"),
    (["faults=links", "faults.p_drop=2"], "faults.p_drop: must be >= 0 and <= 1, got 2"),
    (["faults=links", "faults.partition=3"], "faults.partition: must be a group of options or null, got 3"),
    (["faults=churn", "algorithm=ad_psgd", "topology=ring"],
     "cluster.step_time_s: faults with ad_psgd need a fixed step time (fault step k is virtual time k * "
     "cluster.step_time_s); set one, e.g. cluster.step_time_s=0.01"),
    (["faults=churn", "algorithm=ad_psgd", "topology=ring", "cluster.step_time_s=0.01", "backend=torch"],
     "faults: ad_psgd takes faults on backend=sim only: its workers share no clock on backend=torch, so a worker "
     "and the partner about to wait for it cannot agree that it is down (docs/faults.md)"),
    # -- the run directory and the hints ------------------------------------------------------------
    (["hydra.run.dir={dir}/a_file"], "hydra.run.dir: {dir}/a_file is a file, or lies under one; give a directory"),
    (["hydra.run.dir={dir}/a_file/run"], "hydra.run.dir: {dir}/a_file/run is a file, or lies under one; give a "
                                         "directory"),
    (["experiment=aldsgd_paper"], "experiment: not in the defaults list, so it is added, not overridden: write "
                                  "+experiment=aldsgd_paper"),
    (["+experiment=nope"], "experiment: unknown option 'nope'; available: "),
    (["algorithm.name=my_rule"], "algorithm: unknown algorithm 'my_rule'; available: "),
    (["algorithm=my_rule"], "algorithm: unknown option 'my_rule'; available: "),
    (["imports=[my_rule]", "~algorithm", "+algorithm._target_=my_rule.MyRule", "algorithm.xyz=1"],
     "algorithm.xyz: unknown config key; the keys of algorithm are: name, weight"),     # a user's strategy, in full
]


@pytest.fixture
def files(tmp_path, monkeypatch) -> Iterator[Path]:
    """The files the rows name, and a working directory holding a user's strategy module."""
    (tmp_path / "a_file").write_text("not a directory\n")
    (tmp_path / "three_nodes.txt").write_text("0 1\n1 2\n2 0\n")
    (tmp_path / "two_pieces.txt").write_text("0 1\n2 3\n")
    from PIL import Image
    for cls in ("cat", "dog"):
        for root in ("images", "not_images"):
            (tmp_path / root / cls).mkdir(parents=True, exist_ok=True)
            for i in range(4):
                Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(tmp_path / root / cls / f"{i}.png")
    (tmp_path / "not_images" / "cat" / "notes.png").write_text("this is text, not an image\n")
    (tmp_path / "my_rule.py").write_text('from distlib.strategy import STRATEGIES\n\n'
                                        '@STRATEGIES.register("my_rule")\nclass MyRule:\n'
                                        '    def __init__(self, weight: float = 0.5) -> None:\n'
                                        '        self.weight = weight\n')
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    # a row that imported the user's module leaves no trace for the next row or test file
    from distlib.strategy import STRATEGIES
    sys.modules.pop("my_rule", None)
    STRATEGIES._table.pop("my_rule", None)


def argv(row: list[str], d: Path) -> list[str]:
    keys = {a.split("=", 1)[0].lstrip("+~") for a in row}
    drop = set(keys) | {k for key in keys for k in _DROPS.get(key, ())}
    base = [f"{k}={v}" for k, v in BASE.items() if k not in drop]
    run = [] if "hydra.run.dir" in keys else [f"hydra.run.dir={d}/run"]
    return [*base, *[a.replace("{dir}", str(d)) for a in row], *run]


#: one row per group in the fast tier (each row costs Hydra's two compositions, ~0.3 s); the
#: whole table runs in the full suite
FAST = {"optim.lr=inf", "dataset.sample_with_replacement=true", "checkpoint.dir={dir}/a_file", "model.hidden=[0]",
        "algorithm.name=my_rule", "experiment=aldsgd_paper", "hydra.run.dir={dir}/a_file", "compression=topk",
        "cluster.slowdown_prob=1.5", "log.every_n_steps=0"}


@pytest.mark.parametrize("row,line", [pytest.param(r, line, marks=() if r[0] in FAST else pytest.mark.slow)
                                      for r, line in ROWS], ids=[" ".join(r) for r, _ in ROWS])
def test_a_bad_input_is_one_line_before_any_work(files, monkeypatch, capsys, row, line):
    code, err = cli_in_process(argv(row, files), monkeypatch, capsys)
    assert code == 2, err
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert err[0].startswith("config error: " + line.replace("{dir}", str(files))), err[0]
    assert not (files / "run" / "summary.json").exists()


def test_the_table_covers_every_group_and_its_fields():
    """Every field of the schema's groups has a row, and there are at least 90 rows."""
    import dataclasses
    import typing

    from distlib import schema
    keys = {a.split("=", 1)[0].lstrip("+~") for row, _ in ROWS for a in row}
    hints = typing.get_type_hints(schema.TrainConfig)
    fields = []
    for f in dataclasses.fields(schema.TrainConfig):
        tp = hints[f.name]
        fields += [f"{f.name}.{g.name}" for g in dataclasses.fields(tp)] if dataclasses.is_dataclass(tp) else [f.name]
    assert sorted(k for k in fields if k not in keys) == []
    for group in ("algorithm", "topology", "model", "dataset", "backend", "network", "compression", "experiment",
                  "faults"):
        assert any(k == group or k.startswith(group + ".") for k in keys), group
    assert len(ROWS) >= 90
