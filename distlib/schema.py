"""The run config's schema: the one source of every run-level default, type and range.

One dataclass per group; :func:`distlib.config.register_configs` stores their defaults as
Hydra config nodes (the YAML files keep only presets), and :func:`check` walks a composed
config against :class:`TrainConfig`, raising a one-line ConfigError naming the field::

    optim.lr: must be a number > 0, got -0.1
    checkpoint.every: must be an integer >= 1 or null, got 'often'

The check is stricter than OmegaConf's typed configs, which take 'yes' and 1 for true.
Groups whose options belong to a swappable component (algorithm, topology, model, dataset,
backend) are checked by that component's constructor, which declares them.
"""
from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Union

from omegaconf import DictConfig, ListConfig, OmegaConf

from distlib.errors import ConfigError
from distlib.options import describe_range, in_range, is_integer, is_number, unknown_key


def rule(default: Any = None, *, gt: float | None = None, ge: float | None = None, lt: float | None = None,
         le: float | None = None, allowed: str | None = None) -> Any:
    """A dataclass field with a range (``lr: float = rule(0.05, gt=0)``) or a description of
    what is allowed, for types the message cannot say by itself."""
    meta = {k: v for k, v in (("gt", gt), ("ge", ge), ("lt", lt), ("le", le), ("allowed", allowed))
            if v is not None}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


# -- the groups -------------------------------------------------------------------------------
@dataclass
class OptimBase:
    """What every optimizer preset has. ``_target_`` names the optimizer class, built by
    ``hydra.utils.instantiate`` with ``_partial_`` (distlib/optim.py); the fields from
    ``decay_bias_and_norm`` on are distlib's own (groups, schedule, clipping), never the class's."""
    _target_: str = "torch.optim.SGD"
    _partial_: bool = rule(True, allowed="true (each worker gives the optimizer its own parameters)")
    lr: float = rule(0.05, gt=0)
    weight_decay: float = rule(0.0, ge=0)
    # false: no weight decay on parameters of fewer than 2 dimensions (biases, norm weights)
    decay_bias_and_norm: bool = True
    schedule: Literal["step", "constant", "cosine", "linear"] = "step"      # distlib/lr.py
    milestones: list[float] = rule([], ge=0)    # schedule=step: epochs at which lr is multiplied by gamma
    gamma: float = rule(0.1, gt=0)
    warmup_steps: int = rule(0, ge=0)           # linear warmup from lr / warmup_steps to lr
    min_lr: float = rule(0.0, ge=0)             # cosine, linear: the rate at the end of the run
    clip_grad_norm: Optional[float] = rule(None, gt=0)      # per worker, before the local update


@dataclass
class OptimConfig(OptimBase):
    """optim=sgd, the default: torch.optim.SGD, momentum 0.9."""
    momentum: float = rule(0.9, ge=0, lt=1)
    nesterov: bool = False


@dataclass
class AdamConfig(OptimBase):
    """optim=adam: torch.optim.Adam (torch's defaults); no decay on biases and norms."""
    _target_: str = "torch.optim.Adam"
    lr: float = rule(1e-3, gt=0)
    decay_bias_and_norm: bool = False
    betas: list[float] = rule([0.9, 0.999], ge=0, lt=1)
    eps: float = rule(1e-8, gt=0)


@dataclass
class AdamWConfig(AdamConfig):
    """optim=adamw: torch.optim.AdamW (torch's defaults, weight decay 0.01), decoupled weight
    decay on matrices and embeddings only, as nanoGPT."""
    _target_: str = "torch.optim.AdamW"
    weight_decay: float = rule(0.01, ge=0)


#: the optim=NAME presets; any other class: optim._target_=module.Class
OPTIMIZERS: dict[str, type] = {"sgd": OptimConfig, "adam": AdamConfig, "adamw": AdamWConfig}
#: the optim fields that distlib reads itself (the rest go to the optimizer class)
OPTIM_OWN_FIELDS = tuple(f.name for f in dataclasses.fields(OptimBase)
                         if f.name not in ("lr", "weight_decay"))


@dataclass
class NetworkConfig:
    latency_ms: float = rule(0.0, ge=0)
    bandwidth_mbps: Optional[float] = rule(None, gt=0)
    nodes: list[Any] = rule([])     # per-worker NICs, checked by distlib.network: [{rank, latency_ms, bandwidth_mbps}]
    links: list[Any] = rule([])     # per-link overrides, checked by distlib.network: [{src, dst, ...}]


@dataclass
class ClusterConfig:
    speeds: Optional[list[float]] = rule(None, gt=0)    # relative compute speed, one per worker
    speed_dist: Optional[dict] = None                   # drawn once; its options are checked by distlib.cluster
    seed: int = rule(0, ge=0)                           # for speed_dist and slowdowns (not the run's seed)
    slowdown_prob: float = rule(0.0, ge=0, le=1)
    slowdown_factor: float = rule(4.0, ge=1)
    step_time_s: Optional[float] = rule(None, gt=0)     # fixed compute seconds per step; null = measured


@dataclass
class DatasetConfig:
    """The partition fields every dataset has (its own options are its constructor's)."""
    test_fraction: float = rule(0.2, gt=0, lt=1)
    split_seed: int = rule(0, ge=0)
    # held out of the training part for validation (val_accuracy; what sweeps tune on); 0: none
    val_fraction: float = rule(0.0, ge=0, lt=1)
    partition: Literal["iid", "dirichlet", "shards", "contiguous"] = "iid"
    alpha: float = rule(0.5, gt=0)              # Dirichlet concentration
    shards_per_worker: int = rule(2, ge=1)
    # a shard smaller than batch_size: refused, or (true) its batches repeat its samples. Not in
    # the shipped configs (the default run's recorded config stays as it was): add it with
    # +dataset.sample_with_replacement=true
    sample_with_replacement: bool = False


@dataclass
class CompressionConfig:
    """What gossip messages pass through (distlib/compression.py), for algorithms that compress."""
    name: Literal["none", "topk", "randomk", "qsgd", "sign"] = "none"
    ratio: float = rule(0.01, gt=0, le=1)       # topk, randomk: fraction of coordinates sent
    bits: int = rule(4, ge=2, le=8)             # qsgd: bits per coordinate, sign included


@dataclass
class FaultsConfig:
    """Workers that crash, leave and rejoin, links that fail (distlib/faults.py, docs/faults.md)."""
    name: Literal["none", "crash", "churn", "links"] = "none"
    seed: Optional[int] = rule(None, ge=0)          # null: drawn from the run's seed
    ranks: Optional[list[int]] = rule(None, ge=0)   # crash: these ranks (checked against workers)
    fraction: Optional[float] = rule(None, gt=0, le=1)  # crash: or this seeded fraction of the workers
    at_step: int = rule(0, ge=0)                    # crash: first step down
    down_steps: Optional[int] = rule(None, ge=1)    # crash: steps down; null = for good
    p_leave: float = rule(0.0, ge=0, le=1)          # churn: per live worker per step
    mean_down_steps: float = rule(10.0, ge=1)       # churn: mean of the geometric down time
    max_down: Optional[int] = rule(None, ge=1)      # churn: longest down time; null = unbounded
    p_drop: float = rule(0.0, ge=0, le=1)           # links: per edge per step
    partition: Optional[dict] = None                # links: {a: [...], b: [...] or null, start, end}
    rejoin: Literal["stale", "neighbor", "average"] = "stale"   # what a worker coming back takes as x_i
    detect_s: float = rule(1.0, ge=0)               # virtual seconds a peer loses to notice a dead one


@dataclass
class CheckpointConfig:
    enabled: bool = True
    every: Optional[int] = rule(None, ge=1)     # steps between checkpoints; null = epoch ends and the end
    epoch_end: bool = True
    keep: int = rule(2, ge=1)                   # complete checkpoints kept (the previous one: if the latest is unreadable)
    dir: Optional[str] = None                   # null = <run dir>/checkpoints


@dataclass
class EvalConfig:
    per_worker: bool = True     # evaluate every worker's own model too (accuracy spread)
    per_worker_sample: Optional[int] = rule(None, ge=1)     # only k workers, a seeded sample; null = all


@dataclass
class LogConfig:
    tensorboard: bool = True
    progress: bool = True                               # banner, progress bar / lines, evaluation lines
    every_n_steps: Optional[int] = rule(None, ge=1)     # train loss to TensorBoard every n steps (no evaluation)


@dataclass
class CommConfig:
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"    # gossip messages travel in this dtype


@dataclass
class TrainConfig:
    # null: DEFAULT_WORKERS simulated workers, or under torchrun (backend=torch) one per process
    # (WORLD_SIZE less the algorithm's service ranks); resolved by distlib.config.resolve_workers
    workers: Optional[int] = rule(None, ge=1)
    seed: int = rule(0, ge=0)
    epochs: int = rule(10, ge=1)
    max_steps: Optional[int] = rule(None, ge=1)     # overrides epochs
    batch_size: int = rule(32, ge=1)                # per worker
    accumulate: int = rule(1, ge=1)                 # micro-batches of batch_size per step (the gradient of their mean loss)
    eval_every: Optional[int] = rule(None, ge=1)    # steps between evaluations; null = once per epoch
    init: Literal["same", "per_worker"] = "same"
    imports: list[str] = rule([])                   # your modules that register strategies, models, ...
    resume: Union[bool, str, None] = rule(None, allowed="true (the latest checkpoint), auto (the latest if "
                                                         "any), a checkpoint path, or null")
    device: Literal["auto", "cpu", "cuda"] = "auto"     # auto: cuda if available, else cpu (distlib/device.py)
    precision: Literal[32, "bf16-mixed", "16-mixed"] = 32   # Lightning's names; parameters stay fp32
    compile: bool = False                           # torch.compile each worker's model
    deterministic: bool = False                     # torch.use_deterministic_algorithms for the run
    comm: CommConfig = field(default_factory=CommConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    compression: CompressionConfig = field(default_factory=CompressionConfig)
    faults: FaultsConfig = field(default_factory=FaultsConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    log: LogConfig = field(default_factory=LogConfig)


#: the number of simulated workers when ``workers`` is not given
DEFAULT_WORKERS = 8

#: groups chosen by name on the command line (config group options), not top-level blocks
SELECTED_GROUPS = ("optim", "network", "cluster", "dataset", "compression", "faults")


def run_defaults() -> dict[str, Any]:
    """The top-level fields and blocks of the run config, with their defaults."""
    d = dataclasses.asdict(TrainConfig())
    return {k: v for k, v in d.items() if k not in SELECTED_GROUPS}


# -- checking -----------------------------------------------------------------------------------
def check(cfg: DictConfig | dict, schema: type = TrainConfig, prefix: str = "") -> None:
    """Raise ConfigError for the first field of ``cfg`` that ``schema`` does not allow."""
    hints = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        if f.name not in cfg:
            continue    # not in this config (a group without the option): nothing to check
        value = cfg[f.name]
        if isinstance(value, (DictConfig, ListConfig)):
            value = OmegaConf.to_container(value, resolve=True)
        where, tp, bounds = f"{prefix}{f.name}", hints[f.name], dict(f.metadata)
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: must be a group of options, got {value!r}")
            for preset in _ALTERNATIVES.get(tp, (tp,)):     # each checks the fields it declares
                check(value, preset, f"{where}.")
        elif not _accepts(value, tp, bounds):
            raise ConfigError(f"{where}: {_must(value, tp, bounds)}")
    _check_combinations(cfg, schema)


#: a group whose node may be any of several presets: its fields are checked against each
_ALTERNATIVES: dict[type, tuple[type, ...]] = {OptimConfig: (OptimConfig, AdamConfig)}
#: groups whose keys beyond the schema's are another class's options, checked by that class
#: (optim: the optimizer's constructor, distlib/optim.py)
_OPEN_GROUPS = ("optim",)


def check_keys(cfg: DictConfig | dict, groups: tuple[str, ...] = ()) -> None:
    """Raise ConfigError for a key that no field declares (``+algoritm=x``, ``+foo=1``): at the
    top level, where the component ``groups`` are allowed besides the schema's fields, and
    inside the schema's own groups. A component group's keys are its constructor's options,
    checked by :func:`distlib.registry.check_params`."""
    _check_keys(cfg, TrainConfig, "", groups)


def _check_keys(cfg: DictConfig | dict, schema: type, prefix: str, groups: tuple[str, ...]) -> None:
    hints = typing.get_type_hints(schema)
    names = [f.name for f in dataclasses.fields(schema)]
    for key in cfg:
        if key in groups:
            continue
        if key not in names:
            raise ConfigError(unknown_key(f"{prefix}{key}", [*names, *groups]))
        value = cfg[key]
        if key in _OPEN_GROUPS and not prefix:
            continue
        if dataclasses.is_dataclass(hints[key]) and isinstance(value, (dict, DictConfig)):
            _check_keys(value, hints[key], f"{prefix}{key}.", ())


def _options(tp: Any) -> tuple[Any, ...]:
    return typing.get_args(tp) if typing.get_origin(tp) is Union else (tp,)


def _accepts(value: Any, tp: Any, b: dict[str, Any]) -> bool:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Union:
        return any(_accepts(value, a, b) for a in args)
    if origin is Literal:
        return value in args
    if origin is list:
        return isinstance(value, list) and all(_accepts(v, args[0], b) for v in value)
    bounds = {k: v for k, v in b.items() if k != "allowed"}
    return {type(None): value is None, bool: isinstance(value, bool), str: isinstance(value, str),
            dict: isinstance(value, dict), int: is_integer(value) and in_range(value, **bounds),
            float: is_number(value) and math.isfinite(value) and in_range(value, **bounds)}.get(tp, True)


def _must(value: Any, tp: Any, b: dict[str, Any]) -> str:
    """What is wrong, in the project's words: ``must be an integer >= 1 or null, got 0``."""
    opts = _options(tp)
    literal = next((o for o in opts if typing.get_origin(o) is Literal), None)
    if literal is not None:     # a name that is not one of a list
        return f"unknown {value!r}; allowed: {', '.join(map(str, typing.get_args(literal)))}"
    if "allowed" in b:
        return f"must be {b['allowed']}, got {value!r}"
    rng = describe_range(**{k: v for k, v in b.items() if k != "allowed"})
    null = " or null" if type(None) in opts else ""
    kind = next(o for o in opts if o is not type(None))
    if kind is float and is_number(value) and not math.isfinite(value):    # inf, nan: never a setting
        return f"must be a finite number{' ' + rng if rng else ''}{null}, got {value}"
    if kind in (int, float) and _accepts(value, kind, {}):      # the right type, out of range
        return f"must be {'an integer ' if kind is int else ''}{rng}{null}, got {value}"
    words = {bool: "true or false", str: "a string", dict: "a group of options",
             int: f"an integer {rng}".strip(), float: f"a number {rng}".strip()}
    if typing.get_origin(kind) is list:
        item = typing.get_args(kind)[0]
        plural = {int: "integers", float: "numbers", str: "strings"}.get(item, "values")
        return f"must be a list of {plural}{' ' + rng if rng else ''}{null}, got {value!r}"
    return f"must be {words.get(kind, getattr(kind, '__name__', str(kind)))}{null}, got {value!r}"


def _check_combinations(cfg: DictConfig | dict, schema: type) -> None:
    """Checks that involve several fields of one group."""
    if schema is OptimConfig and cfg.get("nesterov") and not cfg.get("momentum"):
        raise ConfigError("optim.nesterov: needs optim.momentum > 0 (Nesterov is a form of momentum)")
    if schema is AdamConfig and "betas" in cfg and len(cfg["betas"]) != 2:
        raise ConfigError(f"optim.betas: must be two numbers [beta1, beta2], got {cfg['betas']!r}")
    if schema is OptimConfig:   # the fields every preset has, checked once
        kind = cfg.get("schedule", "step")
        if kind != "step" and cfg.get("milestones"):
            raise ConfigError(f"optim.milestones: only for optim.schedule=step, got schedule={kind}; "
                              f"set optim.milestones=[]")
        if kind in ("cosine", "linear") and cfg.get("min_lr", 0.0) > cfg.get("lr", 0.0):
            raise ConfigError(f"optim.min_lr: must be <= optim.lr ({cfg.get('lr')}) for schedule={kind}, "
                              f"got {cfg.get('min_lr')}")
    if schema is TrainConfig:
        speeds = (cfg.get("cluster") or {}).get("speeds")
        if speeds is not None and cfg.get("workers") is not None and len(speeds) != cfg.get("workers"):
            raise ConfigError(f"cluster.speeds: needs one speed per worker ({cfg.get('workers')}), "
                              f"got {len(speeds)}")
        workers, sample = cfg.get("workers"), (cfg.get("eval") or {}).get("per_worker_sample")
        if is_integer(workers) and is_integer(sample) and sample > workers:
            raise ConfigError(f"eval.per_worker_sample: must be <= workers ({workers}) or null (all), got {sample}")


def check_ranks(cfg: DictConfig | dict, ranks: int) -> None:
    """The ranks ``network.nodes`` and ``network.links`` name must exist (< ``ranks``: the
    workers and the algorithm's service ranks); a NIC for rank 9 of 4 would be ignored."""
    network = cfg.get("network") or {}
    for group, keys in (("nodes", ("rank",)), ("links", ("src", "dst"))):
        for i, entry in enumerate(network.get(group) or []):
            for key in keys:
                value = entry.get(key) if isinstance(entry, (dict, DictConfig)) else None
                if is_integer(value) and value >= ranks:
                    raise ConfigError(f"network.{group}[{i}].{key}: must be a rank < {ranks} (the run's workers"
                                      f"{' and service ranks' if ranks != cfg.get('workers') else ''}), got {value}")


def declared(key: str) -> bool:
    """Whether the dotted ``key`` is a field of the schema (``dataset.sample_with_replacement``),
    present in the composed config or not."""
    tp: Any = TrainConfig
    for part in key.split("."):
        if not dataclasses.is_dataclass(tp) or part not in {f.name for f in dataclasses.fields(tp)}:
            return False
        tp = typing.get_type_hints(tp)[part]
    return True


def fault_names() -> tuple[str, ...]:
    """The names ``faults=`` accepts (their schedule: distlib/faults.py)."""
    return typing.get_args(typing.get_type_hints(FaultsConfig)["name"])


def compression_names() -> tuple[str, ...]:
    """The names ``compression=`` accepts (their classes: distlib/compression.py)."""
    return typing.get_args(typing.get_type_hints(CompressionConfig)["name"])


def asdict_of(group: type) -> dict[str, Any]:
    """A group's defaults as a plain dict (a Hydra config node)."""
    return dataclasses.asdict(group())
