"""Command-line entry point: ``distlib-train [overrides]`` (Hydra)."""
from __future__ import annotations

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from distlib.errors import ConfigError


def run(cfg: DictConfig) -> dict | None:
    from distlib.trainer import Trainer
    trainer = Trainer(cfg, HydraConfig.get().runtime.output_dir)
    summary = trainer.run()
    if summary is not None and cfg.log.progress:
        final = summary["final"]
        acc = final.get("test_accuracy")
        print(f"done: test accuracy of the averaged model {100 * acc:.2f}% "
              f"(train loss {final['train_loss']:.4f}) -> {trainer.run_dir}/summary.json")
    return summary


@hydra.main(version_base="1.3", config_path="pkg://distlib.configs", config_name="train")
def _hydra_main(cfg: DictConfig) -> None:
    try:
        run(cfg)
    except ConfigError as e:
        # A wrong config value: one line naming the field, no traceback.
        print(f"config error: {e}", file=sys.stderr)
        sys.exit(2)


def main() -> None:
    _hydra_main()


if __name__ == "__main__":
    main()
