"""Load an exported erasenet network and evaluate it with numpy alone: no torch, no erasenet.

This file depends on nothing but numpy and the standard library, so it can be copied next to an export and run
anywhere: ``python reference.py EXPORT_DIR image.npy`` prints the logits. The format it reads
(``network.json`` and ``weights.npz``) is described in docs/private_inference.md; the private-inference engine
(``spu_engine.py``) reads it through :func:`load` too.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

FORMAT = "erasenet-network"
VERSION = 1


def load(export_dir: str | Path) -> tuple[dict, dict[str, np.ndarray]]:
    """``(graph, arrays)``: the parsed ``network.json`` and every array of ``weights.npz`` by key."""
    export_dir = Path(export_dir)
    graph = json.loads((export_dir / "network.json").read_text())
    if graph.get("format") != FORMAT or graph.get("version") != VERSION:
        raise ValueError(f"{export_dir / 'network.json'} is not an {FORMAT} version {VERSION} graph")
    with np.load(export_dir / "weights.npz", allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    return graph, arrays


def kept_mask(op: dict, arrays: dict[str, np.ndarray]) -> np.ndarray:
    """The boolean mask, over one sample's elements, of the ReLUs a ``relu`` op evaluates (True: kept)."""
    if op["mask"] is None:
        return np.ones(op["shape"], dtype=bool)
    return arrays[op["mask"]].astype(bool)


def windows(x, kernel, stride, dilation=(1, 1)) -> list:
    """Every tap of a sliding window over the last two axes, as strided slices (numpy or jax arrays alike)."""
    kh, kw = kernel
    out_h = (x.shape[-2] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    out_w = (x.shape[-1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    return [x[..., i * dilation[0]: i * dilation[0] + stride[0] * (out_h - 1) + 1: stride[0],
              j * dilation[1]: j * dilation[1] + stride[1] * (out_w - 1) + 1: stride[1]]
            for i in range(kh) for j in range(kw)]


def pad2d(x, padding, xp=np, mode: str = "constant"):
    ph, pw = padding
    return xp.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), mode=mode)


def conv2d(x, w, b, stride, padding, dilation, groups):
    kh, kw = w.shape[2:]
    taps = windows(pad2d(x, padding), (kh, kw), stride, dilation)
    cols = np.stack(taps, axis=2).reshape(x.shape[0], x.shape[1], kh, kw, *taps[0].shape[-2:])
    per_in, per_out = w.shape[1], w.shape[0] // groups
    out = np.concatenate([np.einsum("nckluv,ockl->nouv", cols[:, g * per_in:(g + 1) * per_in],
                                    w[g * per_out:(g + 1) * per_out]) for g in range(groups)], axis=1)
    return out + b.reshape(1, -1, 1, 1)


def channel(v, ndim: int):
    """A per-channel vector shaped to broadcast over a batch of ``ndim`` dimensions (channels on axis 1)."""
    return v.reshape((1, -1) + (1,) * (ndim - 2)) if v.size > 1 else v.reshape(())


def polynomial(x, c):
    """``c2 * x**2 + c1 * x + c0``, coefficients ``c`` of shape (3,) or (3, C) (one set per channel, axis 1)."""
    c2, c1, c0 = (channel(c[k], x.ndim) for k in range(3))
    return c2 * (x * x) + c1 * x + c0


def run_op(op: dict, args: list, arrays: dict, xp=np):
    """One op of the graph on a batch (axis 0) of inputs. ``xp`` is numpy, or jax.numpy for the private engine,
    which brings its own convolution and masked ReLU."""
    kind, x = op["op"], args[0] if args else None
    a = lambda key: arrays[op[key]]  # noqa: E731
    if kind == "conv2d":
        return conv2d(x, a("weight"), a("bias"), op["stride"], op["padding"], op["dilation"], op["groups"])
    if kind == "linear":
        return x @ a("weight").T + a("bias")
    if kind == "affine":
        return x * channel(a("scale"), x.ndim) + channel(a("shift"), x.ndim)
    if kind == "relu":
        kept = kept_mask(op, arrays)[None]
        linear = x if op.get("polynomial") is None else polynomial(x, a("polynomial"))
        return xp.where(kept, xp.maximum(x, 0), linear)
    if kind == "prelu":
        r = xp.maximum(x, 0)
        return r + channel(a("slope"), x.ndim) * (x - r)
    if kind == "polynomial":
        return polynomial(x, a("coefficients"))
    if kind == "add":
        return args[0] + args[1]
    if kind == "scale":
        return x * op["factor"]
    if kind == "avg_pool2d":
        taps = windows(pad2d(x, op["padding"], xp), op["kernel"], op["stride"])
        return sum(taps[1:], taps[0]) * (1.0 / len(taps))
    if kind == "max_pool2d":  # edge padding: a padded tap repeats a value of its own window, so the max is exact
        taps = windows(pad2d(x, op["padding"], xp, "edge"), op["kernel"], op["stride"])
        out = taps[0]
        for t in taps[1:]:
            out = xp.maximum(out, t)
        return out
    if kind == "global_avg_pool":
        return xp.mean(x, axis=(-2, -1), keepdims=op["keepdim"])
    if kind == "reshape":
        return x.reshape((x.shape[0], *op["shape"]))
    if kind == "slice":
        return x[(slice(None),) + tuple(slice(*s) for s in op["slices"])]
    if kind == "pad":
        return xp.pad(x, [(0, 0)] + [tuple(p) for p in op["pads"]])
    if kind == "concat":
        return xp.concatenate(args, axis=op["axis"] + 1)
    raise ValueError(f"unknown op {kind!r} in the graph")


def forward(graph: dict, arrays: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """The network's output for a batch ``x`` (N x input shape), computed in float64."""
    values = {graph["input"]["name"]: np.asarray(x, dtype=np.float64)}
    arrays = {k: v if v.dtype == np.uint8 else v.astype(np.float64) for k, v in arrays.items()}
    for op in graph["ops"]:
        values[op["output"]] = run_op(op, [values[i] for i in op["inputs"]], arrays)
    return values[graph["output"]]


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python reference.py EXPORT_DIR IMAGE.npy  (IMAGE: one normalised image, C x H x W)")
    g, arr = load(sys.argv[1])
    print(json.dumps(forward(g, arr, np.load(sys.argv[2])[None]).tolist()[0]))
