"""Measure every registered model and render the zoo table (``python -m erasenet.models``).

Models are built and run on the ``meta`` device: shapes only, no memory and no arithmetic, so even
ResNet-1202 and the ImageNet ResNet-200s are measured in seconds. MACs are counted by
``torch.utils.flop_counter.FlopCounterMode`` (MACs = FLOPs / 2) for one image of the model's
design input size; they cover convolutions and matrix products, not BN, ReLU, pooling or additions.
ReLUs are the scalar ReLU evaluations of one image (``erasenet.erase.rectifiers.count_relus``), unerased and with
EraseReLU's location (``last``; ``first`` for pre-activation blocks, marked *) at p = 0.5 and 1.
"""

from __future__ import annotations

import functools
import textwrap
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from ..erase import ErasePolicy, EraseReLU, plan_erase, select_blocks
from ..erase.rectifiers import contract_violations, rectifier_calls
from ..erase.sites import block_sites, declared_sites, iter_blocks
from .registry import builder_options, create_model, input_shape, list_models

PROPORTIONS = (0.25, 0.5, 1.0)
RELU_PROPORTIONS = (0.0, 0.5, 1.0)


@dataclass(frozen=True)
class ModelStats:
    name: str
    input_shape: tuple[int, int, int]
    num_classes: int
    params: int
    macs: int
    block_sites: tuple[tuple[str, ...], ...]
    declared_sites: tuple[str, ...]
    relu_calls: tuple[str, ...]  # the module running each rectifier of one forward pass, in order
    output_shape: tuple[int, ...]
    last_erasable: bool  # every block ends with a ReLU (erase.location=last is defined)
    relus: tuple[int, ...]  # scalar ReLU evaluations per image at RELU_PROPORTIONS (location last, else first)
    contract: tuple[str, ...]  # how the model breaks the ReLU-site contract (empty: it holds)

    @property
    def blocks(self) -> int:
        return len(self.block_sites)

    def erased_by_last(self, proportion: float) -> int | None:
        """Sites ``erase.location=last`` changes at ``proportion`` (one per chosen block); None if undefined."""
        return len(select_blocks(self.blocks, proportion)) if self.last_erasable else None


def relu_call_order(model: nn.Module, x: torch.Tensor) -> list[str]:
    """The module running each rectifier (however called) of one evaluation-mode forward pass, in order."""
    return [call.module for call in rectifier_calls(model, tuple(x.shape[1:]), batch=x.shape[0])]


@functools.lru_cache(maxsize=None)
def measure(name: str) -> ModelStats:
    """Build ``name`` with its builder's defaults on the meta device and measure one forward pass."""
    shape = input_shape(name)
    num_classes = builder_options(name)["num_classes"]
    with torch.device("meta"):
        model = create_model(name, num_classes=num_classes, in_chans=shape[0])
    x = torch.empty(1, *shape, device="meta")
    output: list[tuple[int, ...]] = []
    model.register_forward_hook(lambda mod, inp, out: output.append(tuple(out.shape)))
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.eval()(x)
    calls = rectifier_calls(model, shape)
    last_erasable = all(block.ends_with_site for _, block in iter_blocks(model))
    location = "last" if last_erasable else "first"
    elements = {call.module: call.elements for call in calls}
    relus = tuple(sum(elements.values()) - sum(elements.get(site, 0) for site in
                                               plan_erase(model, ErasePolicy(EraseReLU(location, p))).sites)
                  for p in RELU_PROPORTIONS)
    return ModelStats(
        name=name, input_shape=shape, num_classes=num_classes, params=sum(p.numel() for p in model.parameters()),
        macs=counter.get_total_flops() // 2, block_sites=tuple(tuple(s) for s in block_sites(model)),
        declared_sites=tuple(declared_sites(model)), relu_calls=tuple(c.module for c in calls),
        output_shape=output[0], last_erasable=last_erasable, relus=relus,
        contract=tuple(contract_violations(calls, declared_sites(model))))


def _millions(n: int) -> str:
    return f"{n / 1e6:.2f}M"


def _sites_per_block(stats: ModelStats) -> str:
    counts = sorted({len(s) for s in stats.block_sites})
    return "/".join(map(str, counts))


BEGIN, END = "<!-- zoo table: generated, do not edit -->", "<!-- end of zoo table -->"


def render_table(names: list[str] | None = None) -> str:
    """The zoo table in Markdown, between the markers ``write_table`` replaces."""
    lines = [
        BEGIN,
        "| model | input | params | params (exact) | MACs | blocks | sites/block | fixed sites | "
        + " | ".join(f"erase=last p={p:g}" for p in PROPORTIONS) + " | "
        + " | ".join(f"ReLUs p={p:g}" for p in RELU_PROPORTIONS) + " |",
        "|---|---|---:|---:|---:|---:|---:|---:|" + "---:|" * (len(PROPORTIONS) + len(RELU_PROPORTIONS)),
    ]
    for name in names or list_models():
        s = measure(name)
        fixed = len(s.declared_sites) - sum(len(b) for b in s.block_sites)
        erased = [s.erased_by_last(p) for p in PROPORTIONS]
        lines.append(f"| `{name}` | {'x'.join(map(str, s.input_shape))} | {_millions(s.params)} | {s.params:,} | "
                     f"{s.macs / 1e6:,.1f}M | {s.blocks} | {_sites_per_block(s)} | {fixed} | "
                     + " | ".join("n/a" if e is None else str(e) for e in erased) + " | "
                     + " | ".join(f"{r:,}" + ("" if s.last_erasable or p == 0 else "*")
                                  for p, r in zip(RELU_PROPORTIONS, s.relus)) + " |")
    return "\n".join(lines + [END]) + "\n"


def legend(table: str) -> str:
    """What the table's ``n/a`` and ``*`` mean, for the marks that ``table`` holds ('' if none)."""
    rows = table.splitlines()[3:]
    lines = []
    if any("| n/a |" in row for row in rows):
        lines.append("n/a: erase.location=last is undefined: the blocks are pre-activated and end with a convolution, "
                     "not a ReLU (train them with model.form=post, or erase a site by index or with first).")
    if any("*" in row for row in rows):
        lines.append("*: ReLUs counted with erase.location=first, as last is undefined for these blocks.")
    return "".join(textwrap.fill(line, 100, subsequent_indent="     ") + "\n" for line in lines)


def splice_table(document: str, table: str) -> str:
    """``document`` with the text between the markers (inclusive) replaced by ``table``; appended if absent."""
    if BEGIN in document and END in document:
        head, rest = document.split(BEGIN, 1)
        return head + table.rstrip("\n") + rest.split(END, 1)[1]
    return document + ("\n" if document and not document.endswith("\n") else "") + table
