"""The delivered network in an engine-neutral form: a graph (``network.json``) and its arrays (``weights.npz``).

The model is traced with ``torch.fx`` (the layers below are leaves) and translated op by op. Batch norms that
follow a convolution or linear layer are folded into its weights, as private-inference engines expect; any other
becomes a per-channel ``affine``. At each rectifier the graph says exactly which elements keep a ReLU: an SNL gate
(binarised) becomes a ``relu`` op with an element mask and its count, a plain ReLU keeps every element, an erased
site is gone. An operation outside the supported set stops the export with :class:`UnsupportedOperation`,
naming it: nothing is approximated. The export checks itself: the numpy reference (``reference.py``) must give
torch's logits on the test image, or the export fails.

A polynomial activation ``c2*x^2 + c1*x + c0`` is any module with a ``polynomial_coefficients`` attribute: a
tensor of shape (3,) (one polynomial per site) or (3, C) (one per channel), rows ``c2, c1, c0``.
"""

from __future__ import annotations

import json
import operator
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn

from ..common.atomic import atomic_write, save_json
from ..erase.gates import Gate
from ..erase.graph_sites import site_of_module
from . import reference

NETWORK_FILE, WEIGHTS_FILE, ONNX_FILE = "network.json", "weights.npz", "model.onnx"
POLYNOMIAL_ATTRIBUTE = "polynomial_coefficients"
SUPPORTED = ("Conv2d, Linear, BatchNorm1d/2d, ReLU (module or functional), SNL gates, PReLU, polynomial "
             "activations, addition, multiplication by a constant, AvgPool2d, MaxPool2d, AdaptiveAvgPool2d, mean "
             "over H and W, flatten/view/reshape, strided slicing, zero padding, concatenation, Identity, Dropout")
_LEAVES = (nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d, nn.ReLU, nn.PReLU, Gate, nn.AvgPool2d,
           nn.MaxPool2d, nn.AdaptiveAvgPool2d, nn.Flatten, nn.Identity, nn.Dropout)
_SHAPE_ONLY = ("size", "dim")  # methods whose results (ints) only size a reshape


class UnsupportedOperation(ValueError):
    """The network uses an operation the translator does not support (a one-paragraph message naming it)."""


def is_polynomial(module: nn.Module) -> bool:
    return getattr(module, POLYNOMIAL_ATTRIBUTE, None) is not None


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, _LEAVES) or is_polynomial(m) or super().is_leaf_module(m, qualname)


class _Recorder(fx.Interpreter):
    """Runs the traced graph once, keeping every node's value (shapes, and the check of the translation)."""

    def __init__(self, gm: fx.GraphModule):
        super().__init__(gm)
        self.values: dict[str, Any] = {}

    def run_node(self, n: fx.Node) -> Any:
        self.values[n.name] = out = super().run_node(n)
        return out


def _unsupported(what: str, where: str) -> UnsupportedOperation:
    return UnsupportedOperation(
        f"cannot export the network: {what} (at {where}) is not an operation the private-inference translator "
        f"supports, and it never approximates one. The supported operations are: {SUPPORTED}. Replace that "
        "operation in the model, or add its translation to erasenet/pi/export.py and its evaluation to "
        "erasenet/pi/reference.py and erasenet/pi/spu_engine.py.")


def _pair(v) -> list[int]:
    return list(v) if isinstance(v, (tuple, list)) else [int(v), int(v)]


class _Translator:
    def __init__(self, model: nn.Module, gm: fx.GraphModule, values: dict[str, Any]):
        self.modules = dict(model.named_modules())
        self.gm, self.values = gm, values
        self.ops: list[dict] = []
        self.arrays: dict[str, np.ndarray] = {}
        self.alias: dict[str, str] = {}  # a node that computes nothing (Identity, Dropout) -> the value it passes

    # --- helpers -----------------------------------------------------------------------------------------------

    def site_name(self, module_name: str) -> str:
        return site_of_module(module_name, self.modules)

    def value(self, arg: Any, node: fx.Node) -> str:
        if not isinstance(arg, fx.Node) or not torch.is_tensor(self.values.get(arg.name)):
            raise _unsupported(f"an operand that is not a tensor the network computes ({arg!r})", node.format_node())
        return self.alias.get(arg.name, arg.name)

    def array(self, key: str, t: torch.Tensor | np.ndarray) -> str:
        self.arrays[key] = t.detach().cpu().double().numpy() if torch.is_tensor(t) else np.asarray(t)
        return key

    def emit(self, node: fx.Node, op: str, inputs: Sequence[str], **fields) -> dict:
        out = self.values[node.name]
        entry = {"op": op, "name": str(node.target) if node.op == "call_module" else node.name,
                 "inputs": list(inputs), "output": node.name, "shape": list(out.shape[1:]), **fields}
        self.ops.append(entry)
        return entry

    # --- the translation ---------------------------------------------------------------------------------------

    def run(self) -> None:
        for node in self.gm.graph.nodes:
            if node.op in ("placeholder", "output") or (node.op == "get_attr" and not node.users):
                continue  # an unused attribute read: asking a module for its polynomial records one
            if not torch.is_tensor(self.values.get(node.name)):
                if (node.op == "call_method" and node.target in _SHAPE_ONLY) or node.target is operator.getitem \
                        or (node.op == "call_function" and node.target is getattr):
                    continue  # ints sizing a reshape: the reshape takes its shape from the traced run
                raise _unsupported(f"{node.op} {node.target} returning {type(self.values.get(node.name)).__name__}",
                                   node.format_node())
            if node.op == "call_module":
                self.module(node, self.modules[node.target])
            elif node.op in ("call_function", "call_method"):
                self.function(node)
            else:
                raise _unsupported(f"{node.op} {node.target} (a tensor read from the module's attributes)",
                                   node.format_node())

    def module(self, node: fx.Node, m: nn.Module) -> None:
        x, name = self.value(node.args[0], node), str(node.target)
        if isinstance(m, (nn.Identity, nn.Dropout)):
            self.alias[node.name] = x
        elif isinstance(m, nn.Conv2d):
            if m.padding_mode != "zeros" or isinstance(m.padding, str):
                raise _unsupported(f"Conv2d with padding={m.padding!r}, padding_mode={m.padding_mode!r}", name)
            bias = m.bias if m.bias is not None else torch.zeros(m.out_channels)
            self.emit(node, "conv2d", [x], weight=self.array(f"{name}.weight", m.weight),
                      bias=self.array(f"{name}.bias", bias), stride=_pair(m.stride), padding=_pair(m.padding),
                      dilation=_pair(m.dilation), groups=m.groups)
        elif isinstance(m, nn.Linear):
            bias = m.bias if m.bias is not None else torch.zeros(m.out_features)
            self.emit(node, "linear", [x], weight=self.array(f"{name}.weight", m.weight),
                      bias=self.array(f"{name}.bias", bias))
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            if m.running_mean is None:
                raise _unsupported("a batch norm without running statistics (track_running_stats=False)", name)
            scale = m.running_var.add(m.eps).rsqrt() * (m.weight if m.affine else 1.0)
            shift = (m.bias if m.affine else 0.0) - m.running_mean * scale
            self.emit(node, "affine", [x], scale=self.array(f"{name}.scale", scale),
                      shift=self.array(f"{name}.shift", shift), batch_norm=name)
        elif isinstance(m, nn.ReLU):
            self.relu(node, x, name, None)
        elif isinstance(m, Gate):
            self.gate(node, x, name, m)
        elif isinstance(m, nn.PReLU):
            elements = int(self.values[node.name][0].numel())
            self.emit(node, "prelu", [x], slope=self.array(f"{name}.slope", m.weight), site=self.site_name(name),
                      elements=elements, kept=elements)
        elif is_polynomial(m):
            c = torch.as_tensor(getattr(m, POLYNOMIAL_ATTRIBUTE)).detach()
            channels = self.values[node.name].shape[1]
            if c.dim() not in (1, 2) or c.shape[0] != 3 or (c.dim() == 2 and c.shape[1] not in (1, channels)):
                raise _unsupported(f"{type(m).__name__}.{POLYNOMIAL_ATTRIBUTE} of shape {tuple(c.shape)} (expected "
                                   f"(3,) or (3, {channels}): rows c2, c1, c0)", name)
            elements = int(self.values[node.name][0].numel())
            self.emit(node, "polynomial", [x], coefficients=self.array(f"{name}.coefficients", c),
                      site=self.site_name(name), per_channel=c.dim() == 2 and c.shape[1] > 1, elements=elements,
                      polys=elements)
        elif isinstance(m, (nn.AvgPool2d, nn.MaxPool2d)):
            self.pool(node, x, name, m)
        elif isinstance(m, nn.AdaptiveAvgPool2d):
            self.adaptive_avg(node, x, _pair(m.output_size), name)
        elif isinstance(m, nn.Flatten):
            self.emit(node, "reshape", [x])
        else:
            raise _unsupported(f"the module {type(m).__module__}.{type(m).__name__}", name)

    def relu(self, node: fx.Node, x: str, site: str, mask: np.ndarray | None,
             polynomial: torch.Tensor | None = None) -> None:
        """A ``relu`` op: the elements of ``mask`` (None: all) keep their ReLU; the others pass through, or, with
        ``polynomial`` (coefficients (3,) or (3, C), rows c2, c1, c0), take that polynomial."""
        out = self.values[node.name][0]
        elements = int(out.numel())
        kept = elements if mask is None else int(mask.sum())
        key = None if mask is None or kept == elements else self.array(f"{site}.relu_mask", mask.astype(np.uint8))
        poly = None if polynomial is None or kept == elements else self.array(f"{site}.coefficients", polynomial)
        self.emit(node, "relu", [x], site=self.site_name(site), elements=elements, kept=kept, mask=key,
                  polynomial=poly, polys=0 if poly is None else elements - kept)

    def gate(self, node: fx.Node, x: str, name: str, gate: Gate) -> None:
        if gate.mask is None:
            self.relu(node, x, name, None)
            return
        m = gate.mask.detach().cpu()
        if not bool(((m == 0) | (m == 1)).all()):
            raise UnsupportedOperation(
                f"cannot export the network: the gate at {name} is not binarised (its entries lie between 0 and 1), "
                "so its ReLUs are a blend no private-inference engine evaluates. Export a run that has reached "
                "fine-tuning (metrics.jsonl gate_phase 'finetune'), whose gates are 0 or 1.")
        shape = tuple(self.values[node.name].shape[1:])
        polynomial = gate.other.polynomial_coefficients.detach().cpu() if gate.evaluates_polynomial else None
        self.relu(node, x, name, np.broadcast_to(m.numpy().astype(bool), shape).copy(), polynomial)

    def pool(self, node: fx.Node, x: str, name: str, m: nn.Module) -> None:
        kind = "max_pool2d" if isinstance(m, nn.MaxPool2d) else "avg_pool2d"
        if m.ceil_mode or (kind == "max_pool2d" and _pair(m.dilation) != [1, 1]) or \
                (kind == "avg_pool2d" and (not m.count_include_pad or m.divisor_override)):
            raise _unsupported(f"{type(m).__name__} with ceil_mode, dilation, count_include_pad=False or "
                               "divisor_override", name)
        self.emit(node, kind, [x], kernel=_pair(m.kernel_size), stride=_pair(m.stride or m.kernel_size),
                  padding=_pair(m.padding))

    def adaptive_avg(self, node: fx.Node, x: str, size: list, where: str) -> None:
        h, w = self.values[node.args[0].name].shape[-2:]
        size = [h if s is None else s for s in size]
        if size == [1, 1]:
            self.emit(node, "global_avg_pool", [x], keepdim=True)
        elif h % size[0] or w % size[1]:
            raise _unsupported(f"adaptive average pooling of {h}x{w} to {size[0]}x{size[1]} (uneven windows)", where)
        else:
            k = [h // size[0], w // size[1]]
            self.emit(node, "avg_pool2d", [x], kernel=k, stride=k, padding=[0, 0])

    def function(self, node: fx.Node) -> None:
        t, where = node.target, node.format_node()
        method = node.op == "call_method"
        name = t if method else getattr(t, "__name__", str(t))
        args = list(node.args)
        if name in ("relu", "relu_"):
            self.relu(node, self.value(args[0], node), node.name, None)
        elif name in ("add", "iadd", "add_") and len(args) == 2 and all(isinstance(a, fx.Node) for a in args) \
                and not node.kwargs:
            self.emit(node, "add", [self.value(a, node) for a in args])
        elif name in ("mul", "imul", "mul_") and len(args) == 2 and \
                sum(isinstance(a, (int, float)) for a in args) == 1:
            x, factor = (args[0], args[1]) if isinstance(args[1], (int, float)) else (args[1], args[0])
            self.emit(node, "scale", [self.value(x, node)], factor=float(factor))
        elif name in ("flatten", "view", "reshape", "contiguous"):
            x = self.value(args[0], node)
            if name == "contiguous":
                self.alias[node.name] = x
            else:
                self.emit(node, "reshape", [x])
        elif name == "mean" and method:
            dims = args[1] if len(args) > 1 else node.kwargs.get("dim")
            x = self.values[args[0].name]
            if dims is None or sorted(d % x.dim() for d in dims) != [x.dim() - 2, x.dim() - 1] or x.dim() != 4:
                raise _unsupported(f"mean over dims {dims} (only over H and W of an N x C x H x W tensor)", where)
            self.emit(node, "global_avg_pool", [self.value(args[0], node)],
                      keepdim=bool(node.kwargs.get("keepdim", args[2] if len(args) > 2 else False)))
        elif name == "adaptive_avg_pool2d":
            self.adaptive_avg(node, self.value(args[0], node), _pair(args[1] if len(args) > 1 else
                                                                     node.kwargs["output_size"]), where)
        elif name == "cat":
            tensors = args[0]
            dim = args[1] if len(args) > 1 else node.kwargs.get("dim", 0)
            rank = self.values[node.name].dim()
            if dim % rank == 0:
                raise _unsupported("concatenation along the batch dimension", where)
            self.emit(node, "concat", [self.value(a, node) for a in tensors], axis=dim % rank - 1)
        elif name == "getitem" and torch.is_tensor(self.values.get(getattr(args[0], "name", None))):
            self.strided_slice(node, args[0], args[1])
        elif name == "pad" and not method:
            mode = node.kwargs.get("mode", args[2] if len(args) > 2 else "constant")
            value = node.kwargs.get("value", args[3] if len(args) > 3 else 0.0)
            if mode != "constant" or value not in (0, 0.0, None):
                raise _unsupported(f"F.pad with mode={mode!r}, value={value!r} (only zero padding)", where)
            self.zero_pad(node, args[0], list(args[1]))
        elif name in ("max_pool2d", "avg_pool2d") and not method:
            pool = (nn.MaxPool2d if name == "max_pool2d" else nn.AvgPool2d)(*args[1:], **node.kwargs)
            self.pool(node, self.value(args[0], node), where, pool)
        else:
            raise _unsupported(f"the {'method' if method else 'function'} {name}", where)

    def strided_slice(self, node: fx.Node, x: fx.Node, index: Any) -> None:
        shape = self.values[x.name].shape
        index = index if isinstance(index, tuple) else (index,)
        if Ellipsis in index or len(index) > len(shape) or not all(isinstance(i, slice) for i in index):
            raise _unsupported(f"indexing with {index!r} (only slices, one per leading dimension)", node.format_node())
        slices = list(index) + [slice(None)] * (len(shape) - len(index))
        if slices[0] != slice(None):
            raise _unsupported("slicing the batch dimension", node.format_node())
        per_dim = [list(s.indices(n)) for s, n in zip(slices[1:], shape[1:])]
        self.emit(node, "slice", [self.value(x, node)], slices=per_dim)

    def zero_pad(self, node: fx.Node, x: fx.Node, pads: list[int]) -> None:
        rank = self.values[x.name].dim()
        widths = [[0, 0] for _ in range(rank - 1)]
        for k in range(len(pads) // 2):  # F.pad lists the last dimension first
            if rank - 1 - k == 0:
                raise _unsupported("padding the batch dimension", node.format_node())
            widths[rank - 2 - k] = [pads[2 * k], pads[2 * k + 1]]
        if any(p < 0 for w in widths for p in w):
            raise _unsupported("F.pad with negative widths (cropping)", node.format_node())
        self.emit(node, "pad", [self.value(x, node)], pads=widths)

    # --- batch-norm folding ------------------------------------------------------------------------------------

    def fold_batch_norms(self) -> None:
        uses: dict[str, int] = {}
        for op in self.ops:
            for i in op["inputs"]:
                uses[i] = uses.get(i, 0) + 1
        producer = {op["output"]: op for op in self.ops}
        kept = []
        for op in self.ops:
            src = producer.get(op["inputs"][0]) if op["op"] == "affine" else None
            if src is None or src["op"] not in ("conv2d", "linear") or uses[src["output"]] != 1:
                kept.append(op)
                continue
            scale, shift = self.arrays.pop(op["scale"]), self.arrays.pop(op["shift"])
            w = self.arrays[src["weight"]]
            self.arrays[src["weight"]] = w * scale.reshape((-1,) + (1,) * (w.ndim - 1))
            self.arrays[src["bias"]] = self.arrays[src["bias"]] * scale + shift
            src["output"], src["folded_batch_norm"] = op["output"], op["batch_norm"]
        self.ops = kept


def translate(model: nn.Module, image: torch.Tensor) -> tuple[dict, dict[str, np.ndarray], torch.Tensor]:
    """``(graph, arrays, logits)`` of ``model`` (evaluation mode) traced on one ``image`` (C x H x W);
    :class:`UnsupportedOperation` for anything the translator does not support."""
    model.eval()
    try:
        gm = fx.GraphModule(model, _Tracer().trace(model))
    except Exception as err:  # fx raises TraceError, TypeError, RuntimeError... depending on the construct
        raise UnsupportedOperation(f"cannot export the network: torch.fx cannot trace its forward ({err}). The "
                                   "private-inference translator needs a forward without data-dependent control "
                                   "flow.") from None
    recorder = _Recorder(gm)
    with torch.no_grad():
        logits = recorder.run(image.unsqueeze(0).float())
    t = _Translator(model, gm, recorder.values)
    t.run()
    t.fold_batch_norms()
    placeholder = next(n for n in gm.graph.nodes if n.op == "placeholder")
    output = next(n for n in gm.graph.nodes if n.op == "output").args[0]
    if not isinstance(output, fx.Node):
        raise _unsupported(f"a forward that returns {type(output).__name__} rather than one tensor", "output")
    sites = [{"site": op["site"], "op": op["op"], "elements": op["elements"], "kept": op["kept"]}
             for op in t.ops if op["op"] in ("relu", "prelu")]
    graph = {"format": reference.FORMAT, "version": reference.VERSION,
             "input": {"name": placeholder.name, "shape": list(image.shape)},
             "output": t.alias.get(output.name, output.name), "relus": sum(s["kept"] for s in sites),
             "relu_elements": sum(s["elements"] for s in sites), "sites": sites,
             "polys": sum(op.get("polys", 0) for op in t.ops), "ops": t.ops}
    return graph, {k: v.astype(np.uint8 if v.dtype == np.uint8 else np.float32) for k, v in t.arrays.items()}, \
        logits[0]


def check_translation(graph: dict, arrays: dict[str, np.ndarray], image: torch.Tensor, logits: torch.Tensor,
                      tolerance: float = 1e-3) -> float:
    """The largest difference between torch's logits and the numpy reference on the exported graph; a
    ``RuntimeError`` when it exceeds ``tolerance`` (relative to the logits' scale)."""
    ours = reference.forward(graph, arrays, image.unsqueeze(0).double().numpy())[0]
    diff = float(np.abs(ours - logits.double().numpy()).max())
    if diff > tolerance * max(1.0, float(logits.abs().max())):
        raise RuntimeError(f"the exported graph computes other logits than the model (largest difference {diff:.3g}):"
                           " the translation is wrong; please report it with the model")
    return diff


def write_onnx(model: nn.Module, image: torch.Tensor, graph: dict, path: Path) -> str | None:
    """``model.onnx`` with the kept-ReLU count in its metadata (a masked ReLU is a full ``Relu`` node in ONNX);
    None when written, else why not."""
    try:
        import onnx
    except ImportError:
        return "the onnx package is not installed (pip install onnx onnxscript)"
    try:
        with warnings.catch_warnings():  # the TorchScript exporter's deprecation and constant-folding notes
            warnings.simplefilter("ignore")
            torch.onnx.export(model.eval(), (image.unsqueeze(0).float(),), str(path), input_names=["input"],
                              output_names=["logits"], dynamo=False)
    except Exception as err:  # the exporter raises many types, all meaning "this network does not fit ONNX"
        path.unlink(missing_ok=True)
        return f"torch.onnx.export failed: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    proto = onnx.load(str(path))
    meta = {"erasenet.relus": str(graph["relus"]), "erasenet.relu_elements": str(graph["relu_elements"]),
            "erasenet.relu_sites": json.dumps(graph["sites"]),
            "erasenet.note": "a masked ReLU is exported as a full Relu node blended by constant masks; "
                             "erasenet.relus counts the ReLU evaluations the network needs"}
    del proto.metadata_props[:]
    for k, v in meta.items():
        proto.metadata_props.add(key=k, value=v)
    onnx.save(proto, str(path))
    return None


def export_model(model: nn.Module, image: torch.Tensor, out_dir: str | Path, *, onnx: bool = True,
                 extra: dict | None = None) -> dict:
    """Write ``network.json`` and ``weights.npz`` (and ``model.onnx`` where it fits) for ``model`` into ``out_dir``;
    ``image`` (C x H x W, normalised as in training) traces it and checks the translation. Returns the graph."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    graph, arrays, logits = translate(model, image)
    graph["check"] = {"max_abs_difference": check_translation(graph, arrays, image, logits),
                      "logits": logits.tolist()}
    graph.update(extra or {})
    if onnx:
        why = write_onnx(model, image, graph, out_dir / ONNX_FILE)
        graph["onnx"] = ONNX_FILE if why is None else None
        if why:
            graph["onnx_skipped"] = why
    atomic_write(out_dir / WEIGHTS_FILE, lambda f: np.savez(f, **arrays))
    save_json(out_dir / NETWORK_FILE, graph)
    return graph
