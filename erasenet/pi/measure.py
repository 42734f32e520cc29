"""Measure a run's delivered network under two-party computation and write ``pi_cost.json`` beside it.

A run directory is exported (``pi_export/``: the graph, its arrays, ``image.npy`` = the first test image,
normalised as in training), then ``spu_engine.py`` runs one private inference of that image in the SPU
environment as a subprocess. Its logits must equal the plaintext network's within :data:`TOLERANCE` and
predict the same class. An exported directory (``network.json``) is measured as it is, on its ``image.npy``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from ..common.atomic import save_json
from ..common.errors import UserError
from ..common.records import PI_COST_FILE, is_ok
from ..data import load_splits
from ..data.loader import normaliser
from ..training.delivered import load_model
from . import cost
from .export import NETWORK_FILE, export_model

COST_FILE, EXPORT_DIR, IMAGE_FILE = PI_COST_FILE, "pi_export", "image.npy"
ENV_DIR = ".venv-pi"
FRACTION_BITS = 18  # of the 64-bit ring: SPU's default for FM64
# FM64 with 18 fraction bits resolves 2^-18 ~ 3.8e-6, but every truncation may be off by one unit and the error
# grows through the layers: the logits must agree within 1% of their largest magnitude (at least 0.01).
TOLERANCE = 1e-2
TABLE_KINDS = ("conv_matmul", "comparison_relu", "multiplication_polynomial", "truncation", cost.OTHER)
ENGINE = Path(__file__).resolve().parent / "spu_engine.py"


def spu_python(explicit: str | None = None) -> Path:
    """The interpreter of the SPU environment: ``explicit``, ``$ERASENET_PI_PYTHON``, or ``.venv-pi`` in the
    working directory or the repository."""
    for candidate in (explicit, os.environ.get("ERASENET_PI_PYTHON"), Path.cwd() / ENV_DIR / "bin" / "python",
                      Path(__file__).resolve().parents[2] / ENV_DIR / "bin" / "python"):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    raise UserError("no private-inference environment: SecretFlow SPU needs numpy<2 and jax<=0.4.34, so it lives "
                    f"in an environment of its own. Create it with `python -m erasenet.pi setup` (makes {ENV_DIR}/), "
                    "or point --python or $ERASENET_PI_PYTHON at an interpreter that has `spu` installed.")


def test_image(delivered, index: int = 0) -> tuple[torch.Tensor, int]:
    """Test image ``index`` of the run's dataset, normalised as the training loader does, and its label."""
    d = delivered.config["dataset"]
    splits = load_splits(OmegaConf.create(d))
    scale, shift = normaliser(d.get("mean") or [], d.get("std") or [], splits.test.images.shape[1], torch.device("cpu"))
    x = splits.test.images[index: index + 1].float() * scale + shift
    return x[0], int(splits.test.labels[index])


def export_run(run_dir: Path, index: int = 0, out: Path | None = None) -> Path:
    """Export the run's final network and its test image ``index`` into ``out`` (``run_dir/pi_export``)."""
    delivered = load_model(run_dir)
    image, label = test_image(delivered, index)
    out = out or run_dir / EXPORT_DIR
    export_model(delivered.model, image, out, extra={
        "run": str(run_dir), "checkpoint": delivered.checkpoint.name, "image": {"split": "test", "index": index,
                                                                                "label": label}})
    np.save(out / IMAGE_FILE, image.numpy())
    return out


def run_engine(export_dir: Path, python: Path, fraction_bits: int = FRACTION_BITS) -> dict:
    """One private inference in the SPU environment; its raw result."""
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.json"
        cmd = [str(python), str(ENGINE), str(export_dir), str(export_dir / IMAGE_FILE), str(raw), str(fraction_bits)]
        # the SPU environment sees none of this one's paths: its numpy, jax and spu, and the two scripts
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
        done = subprocess.run(cmd, capture_output=True, text=True, env={**env, "PYTHONNOUSERSITE": "1"})
        if done.returncode != 0 or not raw.is_file():
            tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-8:])
            raise UserError(f"the private inference of {export_dir} failed in {python} (exit {done.returncode}):\n"
                            f"{tail}")
        return json.loads(raw.read_text())


def summarise(graph: dict, raw: dict) -> dict:
    """``pi_cost.json``'s content from the exported graph and the engine's raw result."""
    plain = np.asarray(graph["check"]["logits"], dtype=np.float64)
    private = np.asarray(raw["logits"], dtype=np.float64)
    diff = float(np.abs(private - plain).max())
    allowed = TOLERANCE * max(1.0, float(np.abs(plain).max()))
    kinds = cost.breakdown(raw["profile"]["levels"]["mpc"])
    link = raw["profile"]["link"] or {}
    total = {"party0_sent_bytes": link.get("send_bytes", 0), "party1_sent_bytes": link.get("recv_bytes", 0),
             "party0_send_actions": link.get("send_actions", 0), "party1_send_actions": link.get("recv_actions", 0),
             "seconds": round(raw["seconds"], 3)}
    total["bytes"] = total["party0_sent_bytes"] + total["party1_sent_bytes"]
    total["rounds"] = total["party0_send_actions"] + total["party1_send_actions"]
    total["mb"] = round(total["bytes"] / 1e6, 3)
    return {
        "protocol": raw["protocol"], "ring": raw["field"], "ring_bits": raw["ring_bits"],
        "fraction_bits": raw["fraction_bits"], "spu_version": raw["spu_version"], "parties": 2,
        "link": "in-memory (two threads of one process)", "model_owner": 0, "input_owner": 1,
        "relus": graph["relus"], "polys": graph.get("polys", 0), "relu_elements": graph["relu_elements"],
        "sites": graph["sites"],
        "image": graph.get("image"), "run": graph.get("run"), "checkpoint": graph.get("checkpoint"),
        "check": {"max_abs_difference": diff, "tolerance": allowed,
                  "tolerance_rule": f"{TOLERANCE:g} x max(1, max |plaintext logit|)",
                  "plaintext_class": int(plain.argmax()), "private_class": int(private.argmax()),
                  "passed": bool(diff <= allowed and plain.argmax() == private.argmax()),
                  "plaintext_logits": plain.tolist(), "private_logits": private.tolist()},
        "total": total, "by_kind": kinds,
        "latency": cost.latency(raw["seconds"], total["bytes"], total["rounds"]),
        "profile": raw["profile"]["levels"],
    }


def measure_export(export_dir: Path, python: Path, out_dir: Path | None = None,
                   fraction_bits: int = FRACTION_BITS) -> dict:
    graph = json.loads((export_dir / NETWORK_FILE).read_text())
    result = summarise(graph, run_engine(export_dir, python, fraction_bits))
    save_json((out_dir or export_dir) / COST_FILE, result)
    return result


def measure_path(path: str | Path, *, python: str | None = None, index: int = 0,
                 fraction_bits: int = FRACTION_BITS) -> list[tuple[Path, dict]]:
    """Measure an exported network, a run, or every finished run of a sweep below ``path``."""
    path = Path(path)
    interpreter = spu_python(python)
    if (path / NETWORK_FILE).is_file():
        return [(path, measure_export(path, interpreter, fraction_bits=fraction_bits))]
    if (path / "checkpoints").is_dir():
        return [(path, measure_export(export_run(path, index), interpreter, path, fraction_bits))]
    runs = sorted(p.parent for p in path.rglob("result.json") if (p.parent / "checkpoints").is_dir()
                  and is_ok(json.loads(p.read_text())))
    if not runs:
        raise UserError(f"{path} is neither an exported network ({NETWORK_FILE}), a run directory (checkpoints/) nor "
                        "a sweep with finished runs.")
    return [(run, measure_export(export_run(run, index), interpreter, run, fraction_bits)) for run in runs]


def table(results: list[tuple[Path, dict]]) -> str:
    """A short table: per measured network, its ReLUs, traffic per kind, rounds, time and the estimates."""
    head = ["network", "ReLUs", "MB", "conv/matmul", "ReLU", "mult", "trunc", "rest", "rounds", "run s", "LAN s*",
            "WAN s*", "check"]
    rows = [head]
    for where, r in results:
        mb = lambda kind: f"{r['by_kind'][kind]['bytes'] / 1e6:.2f}"  # noqa: E731
        lat = r["latency"]["settings"]
        rows.append([str(where), f"{r['relus']:,}", f"{r['total']['mb']:.2f}", *map(mb, TABLE_KINDS),
                     f"{r['total']['rounds']:,}", f"{r['total']['seconds']:.1f}", f"{lat['LAN']['seconds']:.1f}",
                     f"{lat['WAN']['seconds']:.1f}",
                     "ok" if r["check"]["passed"] else f"FAILED ({r['check']['max_abs_difference']:.2g})"])
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in rows]
    first = results[0][1]
    lines.append(f"{first['protocol']}, {first['ring']} ring, {first['fraction_bits']} fraction bits, SPU "
                 f"{first['spu_version']}; MB: both parties' traffic; * estimates: LAN 3 Gbit/s 0.3 ms RTT, WAN "
                 "400 Mbit/s 40 ms RTT (Cheetah's benchmark settings)")
    return "\n".join(lines)


def setup(env_dir: str = ENV_DIR) -> Path:
    """Create the SPU environment (pip only): a virtual environment with ``spu`` 0.9.5 and what it pins."""
    env = Path(env_dir)
    subprocess.run([sys.executable, "-m", "venv", str(env)], check=True)
    subprocess.run([str(env / "bin" / "python"), "-m", "pip", "install", "--quiet", "spu==0.9.5"], check=True)
    return env / "bin" / "python"
