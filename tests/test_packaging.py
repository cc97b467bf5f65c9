"""A non-editable install ships everything: every module, the Hydra configs and data files.

Builds the wheel (a few seconds, from a copy of the tree) and installs it into a bare
target directory; the CLI's config composition then runs from there, not from the source tree.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    # Build from a copy: an in-tree build leaves build/ behind, whose stale files would mask
    # a module missing from pyproject.toml on the next build.
    src, out = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("wheel")
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in ("distlib", "algorithms", "configs"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    # With this interpreter's setuptools (fast, offline); else in pip's isolated build
    # environment (needs setuptools from an index or a local wheel directory).
    for isolation in (["--no-build-isolation", "--no-index"], []):
        proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "-q", "-w", str(out),
                               str(src)], capture_output=True, text=True, timeout=300)
        if proc.returncode == 0:
            return next(out.glob("distlib-*.whl"))
    pytest.skip(f"cannot build a wheel here: {proc.stderr.strip().splitlines()[-1:]}")


def _expected() -> set[str]:
    """Where each shipped source file must land inside the wheel."""
    files = set()
    for p in (ROOT / "distlib").rglob("*"):
        if p.is_file() and p.suffix in (".py", ".json", ".yaml", ".npz") and "__pycache__" not in p.parts:
            files.add(p.relative_to(ROOT).as_posix())
    # algorithms/ and configs/ sit at the top of the repository and install inside the package
    for top, suffixes in (("algorithms", (".py",)), ("configs", (".py", ".yaml"))):
        for p in (ROOT / top).rglob("*"):
            if p.is_file() and p.suffix in suffixes and "__pycache__" not in p.parts:
                files.add(f"distlib/{top}/" + p.relative_to(ROOT / top).as_posix())
    return files


def test_wheel_holds_every_module_config_and_data_file(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = sorted(_expected() - names)
    assert not missing, f"not in the wheel (add the package to pyproject.toml): {missing}"
    assert "distlib/configs/train.yaml" in names
    top_level = {n.split("/", 1)[0] for n in names if "/" in n and ".dist-info" not in n.split("/", 1)[0]}
    assert top_level == {"distlib"}, f"the wheel installs more than the distlib package: {sorted(top_level)}"


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """The wheel installed into a bare target directory (modules, and bin/ with the console scripts)."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target",
                    str(target), str(wheel)], check=True, capture_output=True, timeout=300)
    return target


def _from(target: Path) -> dict[str, str]:
    """An environment that imports distlib from ``target`` (not the source tree)."""
    return dict(os.environ, PYTHONPATH=str(target), OMP_NUM_THREADS="1")


def test_installed_wheel_composes_the_default_config(installed, tmp_path):
    target = installed
    assert not (target / "algorithms").exists()     # PyPI has a project of that name: never shadow it
    code = ("import distlib, sys; from hydra import compose, initialize_config_module\n"
            "assert distlib.__file__.startswith(sys.argv[1]), distlib.__file__\n"
            "from distlib.config import register_configs; register_configs()\n"
            "with initialize_config_module(config_module='distlib.configs', version_base='1.3'):\n"
            "    cfg = compose('train', overrides=['algorithm=allreduce_sgd'])\n"
            "from distlib.config import resolve_workers\n"
            "from distlib.data import DATASETS\n"
            "digits = DATASETS.build('mnist', {})   # the embedded digits, read from the installed package\n"
            "print(cfg.algorithm.name, resolve_workers(cfg), cfg.topology.name, len(digits.train) + len(digits.test))")
    # run from an empty directory, with the wheel's copy first on the path (not the source tree)
    env = dict(os.environ, PYTHONPATH=str(target), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", code, str(target)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["allreduce_sgd", "8", "ring", "5000"]


def _imports(paths) -> dict[str, set[str]]:
    """Top-level names imported by the given source files -> the files importing them."""
    import ast
    found: dict[str, set[str]] = {}
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else []
            for name in names:
                found.setdefault(name.split(".")[0], set()).add(path.relative_to(ROOT).as_posix())
    return found


def test_every_imported_package_is_declared():
    """What the package imports is in pyproject's dependencies; the optional imports each
    through one module and in their extra (matplotlib: distlib/plotting.py, ``plot``; torchft:
    distlib/comm/ft.py, ``ft``); what the tests import
    besides, in the ``test`` extra."""
    import importlib.metadata as md
    import re
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

    def dist(requirement: str) -> str:
        return re.split(r"[\s<>=!~\[;]", requirement, maxsplit=1)[0].lower().replace("_", "-")

    declared = {dist(r) for r in project["dependencies"]}
    extras = project["optional-dependencies"]
    # an optional import lives in one module, and its package in that extra
    optional_imports = {"matplotlib": ({"distlib/plotting.py"}, "plot"), "torchft": ({"distlib/comm/ft.py"}, "ft")}
    for_tests = declared | {dist(r) for r in project["optional-dependencies"]["test"]}
    providers = {k: {d.lower().replace("_", "-") for d in v} for k, v in md.packages_distributions().items()}
    sources = [p for d in ("distlib", "algorithms", "configs") for p in (ROOT / d).rglob("*.py")]
    for name, files in _imports(sources).items():
        if name in sys.stdlib_module_names or name in ("distlib", "algorithms"):
            continue
        dists = providers.get(name, {name})
        if name in optional_imports:
            where, extra = optional_imports[name]
            assert files == where and dists & {dist(r) for r in extras[extra]}, (name, files)
        else:
            assert dists & declared, f"{name} (imported by {sorted(files)}) is not in [project] dependencies"
    local = {p.stem for p in (ROOT / "tests").glob("*.py")}
    for name, files in _imports((ROOT / "tests").glob("*.py")).items():
        if name not in sys.stdlib_module_names and name not in local | {"distlib", "algorithms"}:
            dists = providers.get(name, {name})
            assert dists & for_tests, f"{name} (imported by {sorted(files)}) is not in the test extra"


def test_python_m_distlib_runs_the_installed_copy(installed, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "distlib", "--help"], cwd=tmp_path, env=_from(installed),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "== Configuration groups ==" in proc.stdout and "algorithm: " in proc.stdout
    code = "import distlib.__main__, sys; print(distlib.__main__.__file__)"
    where = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=_from(installed), capture_output=True,
                           text=True, timeout=120).stdout.strip()
    assert where.startswith(str(installed)), where


TINY_RUN = ["dataset=synthetic", "dataset.samples=400", "model=mlp", "model.hidden=[8]", "batch_size=16",
            "max_steps=4", "eval_every=2", "log.tensorboard=false", "backend=torch", "backend.dist=gloo",
            "backend.timeout_s=60"]


def _torchrun(installed: Path, tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    """The documented launch: torchrun --no-python distlib-train, with the installed console script."""
    from support import free_port
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={free_port()}", "--no-python", str(installed / "bin" / "distlib-train"), *TINY_RUN,
           *overrides]
    return subprocess.run(cmd, cwd=tmp_path, env=_from(installed), capture_output=True, text=True, timeout=300)


@pytest.mark.multiprocess
def test_torchrun_of_the_installed_script_takes_workers_from_the_world_size(installed, tmp_path):
    run_dir = tmp_path / "run"
    done = _torchrun(installed, tmp_path, f"hydra.run.dir={run_dir}")
    assert done.returncode == 0, done.stderr[-3000:]
    s = __import__("json").loads((run_dir / "summary.json").read_text())
    assert s["workers"] == 2 and s["config"]["workers"] == 2 and s["backend"] == "torch"
    assert [h["step"] for h in s["history"]] == [2, 4]
    assert len(s["comm"]["bytes_sent_per_worker"]) == 2
    # an explicit workers= that disagrees with the processes torchrun started is refused, naming both
    refused = _torchrun(installed, tmp_path, "workers=3", f"hydra.run.dir={tmp_path / 'refused'}")
    assert refused.returncode != 0
    assert "config error: workers: the run needs 3 ranks" in refused.stderr and "has 2 processes" in refused.stderr
