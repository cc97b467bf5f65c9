"""Command-line entry point: ``distlib-train [overrides]`` (Hydra)."""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException, MissingConfigException
from omegaconf import DictConfig, OmegaConf

from distlib import console
from distlib.errors import CheckpointWriteError, CommError, ConfigError, DivergenceError
from distlib.options import imports_hint, unknown_key
from distlib.sweep import register_resolvers

# At import, not in main(): the joblib and submitit launchers run each job in a fresh process
# that imports this module to unpickle the task, and resolves the job's config there.
register_resolvers()

if TYPE_CHECKING:
    from distlib.interrupt import Interrupted


def run(cfg: DictConfig) -> dict | None:
    from distlib import sweep
    from distlib.trainer import Trainer
    hc = HydraConfig.get()
    sweep.fit_threads(hc.launcher)      # joblib: the parallel jobs share the cores
    if cfg.get("resume") == "auto":
        done = sweep.finished_summary(Path(hc.runtime.output_dir))
        if done is not None:    # a sweep run again: this run is already made
            console.info(f"already complete, skipped: {hc.runtime.output_dir}")
            return done
    trainer = Trainer(cfg, hc.runtime.output_dir, sweep=swept_overrides())
    summary = trainer.run()
    if summary is not None and cfg.log.progress:
        final = summary["final"]
        acc = final.get("test_accuracy")
        if "perplexity" in final:    # a language model: its validation figures
            console.info(f"done: validation loss of the averaged model {final['val_loss']:.4f} (perplexity "
                         f"{final['perplexity']:.2f}, {final['bits_per_char']:.3f} bits/char, next-token accuracy "
                         f"{100 * final['val_accuracy']:.2f}%; test loss {final['test_loss']:.4f}) "
                         f"-> {trainer.run_dir}/summary.json")
        else:
            console.info(f"done: test accuracy of the averaged model {100 * acc:.2f}% "
                         f"(train loss {final['train_loss']:.4f}) -> {trainer.run_dir}/summary.json")
    return summary


def interrupted_line(e: "Interrupted", cfg: DictConfig) -> str:
    """``interrupted by SIGINT at step 40 of 600; checkpoint written; resume with: distlib-train
    ... resume=true hydra.run.dir=RUN`` (this job's own overrides, also inside a sweep)."""
    head = str(e)
    if e.checkpoint is None:
        return f"{head}; no checkpoint (checkpoint.enabled=false): nothing to resume from"
    return f"{head}; checkpoint written ({e.checkpoint.name}); resume with: {resume_command(cfg)}"


def resume_command(cfg: DictConfig) -> str:
    """``distlib-train ... resume=true hydra.run.dir=RUN`` (this job's own overrides, also inside a
    sweep), under torchrun with its launcher."""
    import shlex
    hc = HydraConfig.get()
    keep = [o for o in hc.overrides.task if o.split("=", 1)[0].lstrip("+~") != "resume"]
    cmd = ["distlib-train", *keep, "resume=true", f"hydra.run.dir={Path(hc.runtime.output_dir).resolve()}"]
    if cfg.backend.name == "torch" and "WORLD_SIZE" in os.environ:
        local = os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"])
        nodes = int(os.environ["WORLD_SIZE"]) // max(int(local), 1)
        launch = ["torchrun", f"--nproc_per_node={local}"] if nodes == 1 else \
            ["torchrun", "<your torchrun options>"]
        cmd = [*launch, "--no-python", *cmd]
    return shlex.join(cmd)


def swept_overrides(argv: list[str] | None = None) -> dict[str, str]:
    """In a Hydra multirun, this job's values of the overrides the sweep varies (``-m
    algorithm=dpsgd,matcha seed=0,1`` -> ``{"algorithm": "matcha", "seed": "1"}``), in
    command-line order; {} for a single run."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.types import RunMode
    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        return {}
    args = [a for a in (sys.argv[1:] if argv is None else argv) if "=" in a and not a.startswith("-")]
    # A joblib or submitit job runs in a process of its own, whose argv is the launcher's; the
    # sweep's command line is in the multirun.yaml that Hydra's sweeper wrote before any job.
    launched = Path(hc.sweep.dir) / "multirun.yaml"
    if launched.is_file():
        args += [a for a in OmegaConf.load(launched).hydra.overrides.task if a not in args]
    keys = []
    for a in args:
        try:
            o = OverridesParser.create().parse_override(a)
        except Exception:   # Hydra parsed them already; a failure here only loses the run name
            continue
        if o.is_sweep_override() and o.key_or_group not in keys:
            keys.append(o.key_or_group)
    keys += [k for k in (hc.sweeper.get("params") or {}) if k not in keys]    # sweeps declared in a config
    mine = {}
    for o in OverridesParser.create().parse_overrides(list(hc.overrides.task)):
        mine[o.key_or_group] = o.get_value_element_as_str()
    return {k: mine[k] for k in keys if k in mine}


#: set once Hydra has made the run directory and calls the task: an OSError before that is
#: Hydra failing to make or write ``hydra.run.dir``
_TASK_STARTED = False


@hydra.main(version_base="1.3", config_path="pkg://distlib.configs", config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    """Returns the final validation accuracy (with ``dataset.val_fraction``; what a tuning
    sweeper such as Optuna maximises), else None."""
    from hydra.types import RunMode

    global _TASK_STARTED
    _TASK_STARTED = True
    from distlib.comm import heartbeat
    from distlib.interrupt import Interrupted
    from distlib.sweep import objective, record_divergence
    heartbeat.RESUME_HINT = resume_command(cfg)     # a frozen peer ends the run from another thread
    try:
        return objective(run(cfg))
    except Interrupted as e:
        # Ctrl-C / SIGTERM: the step finished and a checkpoint was written; one line, no traceback.
        console.error(interrupted_line(e, cfg))
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            # A launcher may catch SystemExit and start the next job, which the signal would
            # stop after one step, and so on down the sweep: end the whole sweep here.
            import logging
            logging.shutdown()
            os._exit(e.exit_code)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        import signal

        from distlib import interrupt
        signum = interrupt.stopped_by()
        console.error(f"interrupted by {signal.Signals(signum).name}: stopped at once (a second signal, before the "
                      f"training loop started, or a protocol with no consistent cut); no checkpoint written")
        sys.exit(128 + signum)
    except ConfigError as e:
        # A wrong config value: one line naming the field, no traceback.
        console.error(f"config error: {e}")
        sys.exit(2)
    except DivergenceError as e:
        # NaN or inf: one line naming worker, step and last finite loss; checkpoints are kept.
        console.error(f"diverged: {e}")
        if HydraConfig.get().mode == RunMode.MULTIRUN:  # one diverged run does not stop the sweep
            record_divergence(Path(HydraConfig.get().runtime.output_dir), f"diverged: {e}",
                              OmegaConf.to_container(cfg, resolve=True))
            return 0.0
        sys.exit(3)
    except CheckpointWriteError as e:
        # The disk filled (or a mount went away) after the preflight: the previous checkpoint is kept.
        console.error(f"checkpoint write failed: {e}")
        sys.exit(1)
    except CommError as e:
        # A peer died (or froze, or called something else): one line naming it, and how to go on.
        console.error(f"{' '.join(str(e).split())}; resume with: {resume_command(cfg)}")
        sys.exit(heartbeat.EXIT_PEER_LOST)


def main() -> None:
    # Hydra prints a composition error (``algorithm=nope``, a misspelt key) over several lines
    # plus a hint; asking it to raise instead lets us give the same one-line message as for
    # every other config error.
    saved = os.environ.get("HYDRA_FULL_ERROR")
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")
    from distlib.identity import foreign_distlib
    clash = foreign_distlib()
    if clash:
        print(clash, file=sys.stderr)
    from distlib.config import register_configs
    register_configs()
    from distlib import interrupt
    previous = interrupt.install()     # SIGINT / SIGTERM: finish the step, checkpoint, exit 130 / 143
    argv = sys.argv[1:]
    sys.argv += rank_hydra_overrides(argv)     # under torchrun, only rank 0 writes files
    global _TASK_STARTED
    _TASK_STARTED = False
    try:
        _hydra_main()
    except CompactHydraException as e:     # composition and override-syntax errors
        print(f"config error: {_one_line(e, argv)}", file=sys.stderr)
        sys.exit(2)
    except (OSError, ValueError) as e:
        if _TASK_STARTED:
            raise
        # Hydra could not make the run directory, or write its .hydra/ copy or log file there.
        print(f"config error: {_run_dir_line(e, argv)}", file=sys.stderr)
        sys.exit(2)
    finally:
        interrupt.uninstall(previous)
        if saved is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)


def rank_hydra_overrides(argv: list[str], environ: dict[str, str] | None = None) -> list[str]:
    """Extra Hydra overrides so that ranks other than 0 write nothing.

    Rank 0 owns the run directory (config, log, TensorBoard, summary.json). The other ranks
    run in the working directory (or the ``hydra.run.dir`` given on the command line, which
    all ranks then share), with no ``.hydra`` copy and no log file, so they leave no
    half-empty run directories behind.
    """
    env = os.environ if environ is None else environ
    if env.get("RANK", "0") == "0":
        return []
    extra = ["hydra.output_subdir=null", "hydra/job_logging=none", "hydra/hydra_logging=none"]
    if not any(a.split("=", 1)[0].lstrip("+") == "hydra.run.dir" for a in argv):
        extra.append("hydra.run.dir=.")
    return extra


def _run_dir_line(e: BaseException, argv: list[str]) -> str:
    """``hydra.run.dir: /x is a file, not a directory`` for Hydra's failure to set up the run
    directory (it raises OSError from mkdir, or ValueError when the log file cannot be opened)."""
    while isinstance(e, ValueError) and e.__cause__ is not None:     # logging.config wraps the OSError
        e = e.__cause__
    multirun = any(a in ("-m", "--multirun") for a in argv)
    field = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    given = next((a.split("=", 1)[1] for a in argv if a.lstrip("+").startswith(field + "=")), None)
    where = getattr(e, "filename", None) or given or "the run directory"
    if isinstance(e, (FileExistsError, NotADirectoryError)):
        return f"{field}: {where} is a file, or lies under one; give a directory"
    reason = (getattr(e, "strerror", None) or " ".join(str(e).split())).lower()
    return f"{field}: cannot write {where}: {reason}; give a writable directory"


def _one_line(e: CompactHydraException, argv: list[str] | None = None) -> str:
    """``algorithm: unknown option 'nope'; available: a, b`` for a wrong config group option;
    ``optim.lrr: unknown config key; did you mean 'optim.lr'?`` for a key that does not exist."""
    missing = re.match(r"Could not override '([^']+)'", str(e))
    if missing:
        key = missing.group(1)
        if "." not in key and key in _optional_groups():     # experiment=x: a group not in the defaults
            value = next((a.split("=", 1)[1] for a in argv or [] if a.split("=", 1)[0] == key), "NAME")
            return (f"{key}: not in the defaults list, so it is added, not overridden: write "
                    f"+{key}={value}")
        from distlib.schema import declared
        # an optional dataset field the shipped configs leave out (sample_with_replacement, val_fraction);
        # in other groups a declared field may just not belong to the chosen preset (optim=adam: momentum)
        if key.startswith("dataset.") and declared(key):
            value = next((a.split("=", 1)[1] for a in argv or [] if a.split("=", 1)[0] == key), "VALUE")
            return f"{key}: off unless added, so it is added, not overridden: write +{key}={value}"
        keys = _keys_beside(key, argv or [])
        if not keys and key.startswith("faults."):     # the group is off by default (no faults)
            return f"{key}: no faults group chosen; choose one first: faults=crash, churn or links"
        return unknown_key(key, keys)
    if isinstance(e, MissingConfigException) and e.options and e.missing_cfg_file \
            and "/" in e.missing_cfg_file:
        group, name = e.missing_cfg_file.rsplit("/", 1)
        hint = imports_hint(name)
        if hint:    # a group option needs its yaml too, besides the module
            hint += f" and --config-dir DIR holding {group}/{name}.yaml (docs/writing-a-strategy.md)"
        return f"{group}: unknown option {name!r}; available: {', '.join(e.options)}{hint}"
    cause = str(e.__cause__).splitlines()[0] if e.__cause__ is not None and str(e.__cause__) else ""
    text = str(e) + (f" ({cause})" if cause else "")
    return " ".join(text.split())



def _keys_beside(key: str, argv: list[str]) -> list[str]:
    """The keys of the group that ``key`` names a field of, in the config composed from the
    other overrides (so ``algorithm.fromm`` is compared with the chosen algorithm's options)."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    group = key.rpartition(".")[0]
    rest = [a for a in argv if ("=" in a or a.startswith("~")) and not a.startswith("-")
            and a.split("=", 1)[0].lstrip("+~") != key
            and not a.lstrip("+~").startswith("hydra.") and not a.lstrip("+~").startswith("hydra/")]
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module="distlib.configs", version_base="1.3"):
            cfg = compose(config_name="train", overrides=rest)
        node = OmegaConf.select(cfg, group) if group else cfg
        keys = [str(k) for k in node] if isinstance(node, DictConfig) else []
    except Exception:     # the other overrides are wrong too (or name a config of the user's)
        keys = []
    finally:
        GlobalHydra.instance().clear()
    if len(keys) > 1 and not any(a.lstrip("+").startswith(f"{group}._target_=") for a in argv):
        return keys
    return _component_keys(group, argv) or keys     # a user's class: its constructor's options


def _component_keys(group: str, argv: list[str]) -> list[str]:
    """The options of the component ``group`` selects on the command line (``algorithm=NAME``,
    ``algorithm.name=NAME`` or ``+algorithm._target_=mod.Class``), from its constructor, after
    importing the modules ``imports=[...]`` names: a user's own strategy, whose config node
    the package's configs cannot compose."""
    from distlib.config import COMPONENT_GROUPS
    if group not in COMPONENT_GROUPS:
        return []
    given = {a.split("=", 1)[0].lstrip("+~"): a.split("=", 1)[1] for a in argv if "=" in a}
    mods = [m.strip(" '\"") for m in given.get("imports", "").strip("[]").split(",") if m.strip(" '\"")]
    try:
        import importlib
        if mods and os.getcwd() not in sys.path:
            sys.path.append(os.getcwd())
        for mod in mods:
            importlib.import_module(mod)
        from distlib.config import component_registries
        from distlib.registry import defaults_of
        if f"{group}._target_" in given:
            from hydra.utils import get_class
            factory = get_class(given[f"{group}._target_"])
        else:
            factory = component_registries()[group].get(given.get(group) or given[f"{group}.name"])
        return [f"{group}.{k}" for k in ("name", *defaults_of(factory))]
    except Exception:     # noqa: BLE001  (a suggestion is only a nicety)
        return []


def _optional_groups() -> list[str]:
    """Config groups of the package that are not in the defaults list (``experiment``)."""
    from importlib.resources import files
    root = files("distlib.configs")
    return [p.name for p in root.iterdir() if p.is_dir() and p.name == "experiment"]


if __name__ == "__main__":
    main()
