"""Shared fixtures: composed configs (through Hydra's compose API), tiny CIFAR-format data, and the command line
run in this process (``train_cli``) or in a fresh one (``run_cli``, where the process boundary is what is tested)."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import pickle
import random
import signal
import subprocess
import sys
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module

from erasenet.common.config import register_configs

# The suite runs in one worker per core (pytest-xdist, pyproject.toml): one torch thread each, and one for the
# processes they start, so that the workers do not oversubscribe the cores. Run alone (-n 0), two threads.
THREADS = 1 if os.environ.get("PYTEST_XDIST_WORKER") else 2
if THREADS == 1:
    os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(THREADS)
register_configs()
REPO = Path(__file__).resolve().parents[1]
# The longest files first: a worker takes a whole file at a time (--dist loadfile), so a long file collected late
# would run on alone at the end while the other worker waits.
LONGEST_FILES = ("test_budget_presets.py", "test_presets.py", "test_resume.py", "test_zoo.py", "test_models.py",
                 "test_distributed.py", "test_pi.py", "test_mnist_cnn_presets.py")


def pytest_collection_modifyitems(items: list) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONGEST_FILES)))  # stable: a file keeps its order


@pytest.fixture
def make_cfg():
    """``make_cfg(*overrides)``: the composed, validated config a command line would give."""

    def make(*overrides: str):
        with initialize_config_module(config_module="erasenet.conf", version_base=None):
            return compose(config_name="config", overrides=list(overrides))

    return make


def write_cifar(root: Path, name: str = "cifar10", n_train: int = 100, n_test: int = 40, seed: int = 0) -> Path:
    """Write a small dataset in the real CIFAR python-pickle layout under ``root``; return ``root``."""
    rng = np.random.default_rng(seed)
    classes, label_key = (10, "labels") if name == "cifar10" else (100, "fine_labels")
    folder = root / ("cifar-10-batches-py" if name == "cifar10" else "cifar-100-python")
    folder.mkdir(parents=True, exist_ok=True)
    train_files = [f"data_batch_{i}" for i in range(1, 6)] if name == "cifar10" else ["train"]
    test_files = ["test_batch"] if name == "cifar10" else ["test"]

    def dump(path: Path, n: int) -> None:
        labels = (np.arange(n) % classes).tolist()
        entry = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), label_key: labels,
                 "batch_label": "synthetic", "filenames": [f"img{i}.png" for i in range(n)]}
        if name == "cifar100":
            entry["coarse_labels"] = [c // 5 for c in labels]
        with open(path, "wb") as f:
            pickle.dump(entry, f)

    for f in train_files:
        dump(folder / f, n_train // len(train_files))
    for f in test_files:
        dump(folder / f, n_test)
    return root


def run_cli(*args: str, cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    """Run ``python -m erasenet.train ARGS`` in a fresh Python, in ``cwd``: for the tests of what only a process
    shows (its launcher's worker processes, a cluster's jobs); ``train_cli`` runs the same command in this one."""
    env = {**os.environ, "CI": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "erasenet.train", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


@dataclass
class CliRun:
    """What ``python -m erasenet.train ARGS`` showed its user: the exit status and what it printed."""

    returncode: int
    stdout: str
    stderr: str


def train_cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> CliRun:
    """``python -m erasenet.train ARGS`` in ``cwd`` (``CI=1`` and ``env`` added to the environment), run in this
    process as erasenet.train's entry runs it: Hydra's main reads ``sys.argv``, and its exit status and output are
    what a process would give (an uncaught exception prints its traceback and exits 1, as Python does). What a
    fresh process starts without is undone afterwards: Hydra's global state, logging, the working directory, the
    environment, torch's settings, the random generators, signal handlers."""
    from erasenet import train

    out, err = io.StringIO(), io.StringIO()
    with _fresh_process(cwd, {"CI": "1", **(env or {})}), contextlib.redirect_stdout(out), \
            contextlib.redirect_stderr(err):
        sys.argv = [train.__file__, *args]
        try:
            train.cli()
            code = 0
        except SystemExit as stop:
            code = _exit_status(stop.code)
        except Exception:  # noqa: BLE001 - what the interpreter does with an exception nobody caught
            traceback.print_exc()
            code = 1
    return CliRun(code, out.getvalue(), err.getvalue())


def _exit_status(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)  # sys.exit("message"): the interpreter prints it and exits 1
    return 1


@contextlib.contextmanager
def _fresh_process(cwd: Path, env: dict[str, str]) -> Iterator[None]:
    """State a command changes in its process, as a fresh process has it for the command, restored afterwards."""
    import hydra._internal.utils as hydra_internals
    from hydra.core.singleton import Singleton

    from erasenet.cli import job
    from erasenet.common import faults

    saved_cwd, saved_argv, saved_env = os.getcwd(), sys.argv[:], dict(os.environ)
    hydra_state = Singleton.get_state()
    debugger_check = hydra_internals.is_under_debugger
    logs = _LoggingState()
    torch_state = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
                   torch.is_deterministic_algorithms_warn_only_enabled(), torch.backends.cudnn.deterministic,
                   torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32,
                   torch.backends.cudnn.allow_tf32)
    rngs = torch.get_rng_state(), np.random.get_state(), random.getstate()
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)}
    noted = dict(job._EXISTED)
    try:
        os.chdir(cwd)
        os.environ.update(env)
        # Hydra takes a tracer (coverage's) for a debugger and then re-raises what it would report to a user
        hydra_internals.is_under_debugger = lambda: False
        logs.reset()
        job._EXISTED.clear()  # the folders a process noted as existing before it ran
        if os.environ.get("ERASENET_FAULT"):  # a process arms the fault its environment names
            name, occurrence, action = os.environ["ERASENET_FAULT"].rsplit(":", 2)
            faults.arm(name, int(occurrence), action)
        with warnings.catch_warnings():
            yield
    finally:
        faults.arm(None)
        job._EXISTED.clear()
        job._EXISTED.update(noted)
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        torch.set_rng_state(rngs[0])
        np.random.set_state(rngs[1])
        random.setstate(rngs[2])
        threads, deterministic, warn_only, *flags = torch_state
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32,
         torch.backends.cudnn.allow_tf32) = flags
        logs.restore()
        hydra_internals.is_under_debugger = debugger_check
        Singleton.set_state(hydra_state)
        os.environ.clear()
        os.environ.update(saved_env)
        sys.argv = saved_argv
        os.chdir(saved_cwd)


class _LoggingState:
    """Every logger's level, handlers and flags, to give a command the logging of a fresh process (no handlers,
    the root at WARNING) and to put pytest's back afterwards, closing the handlers the command opened."""

    def __init__(self) -> None:
        self.loggers = {name: (lg.level, lg.handlers[:], lg.propagate, lg.disabled)
                        for name, lg in self._all().items()}

    @staticmethod
    def _all() -> dict[str, logging.Logger]:
        found = {name: lg for name, lg in logging.Logger.manager.loggerDict.items() if isinstance(lg, logging.Logger)}
        return {"": logging.getLogger(), **found}

    def reset(self) -> None:
        root = logging.getLogger()
        root.handlers.clear()
        root.setLevel(logging.WARNING)

    def restore(self) -> None:
        kept = {id(h) for _, handlers, _, _ in self.loggers.values() for h in handlers}
        for name, lg in self._all().items():
            for handler in lg.handlers:
                if id(handler) not in kept:
                    handler.close()
            level, handlers, propagate, disabled = self.loggers.get(name, (logging.NOTSET, [], True, False))
            lg.setLevel(level)
            lg.handlers[:] = handlers
            lg.propagate, lg.disabled = propagate, disabled
