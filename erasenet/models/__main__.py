"""``python -m erasenet.models [--write FILE]``: print the zoo table, or update it inside FILE.

``python -m erasenet.models --arch ARCH [--erase LOCATION --proportion P]``: print one network's blocks, its
ReLU sites and what an erase policy would change, without training. ARCH is a zoo name (``resnet110``) or
``torchvision:<arch>`` / ``timm:<arch>``.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch
import torch.nn as nn

from ..erase import ErasePolicy, EraseReLU, apply_erase, find_sites, plan_erase
from ..erase.rectifiers import count_relus
from .registry import builder_options, create_model, input_shape, list_models
from .zoo import legend, render_table, splice_table

EXTERNAL_INPUT = (3, 224, 224)


def build_arch(arch: str, activation: str | None = None) -> tuple[nn.Module, tuple[int, int, int]]:
    """The network ``arch`` names, on the meta device, with the input it is designed for."""
    library, _, name = arch.partition(":")
    with torch.device("meta"):
        if name:
            if library not in list_models(external=True) or library in list_models():
                raise SystemExit(f"--arch {arch}: the library before ':' must be torchvision or timm")
            options = {"arch": name} | ({"activation": activation} if activation else {})
            try:
                return create_model(library, num_classes=1000, **options), EXTERNAL_INPUT
            except ValueError as err:
                raise SystemExit(f"--arch {arch}: {err}") from None
        if arch not in list_models():
            raise SystemExit(f"--arch {arch}: not a zoo model; choose one of {', '.join(list_models())}, "
                             f"or torchvision:<arch> / timm:<arch>")
        shape = input_shape(arch)
        return create_model(arch, num_classes=builder_options(arch)["num_classes"], in_chans=shape[0]), shape


def structure(model: nn.Module) -> tuple[list[tuple[str, list[str]]], list[str], str]:
    """``(blocks as (name, site names), fixed sites, how they were found)``."""
    sites = find_sites(model)
    return [(b.name, b.site_names) for b in sites.blocks], [s.name for s in sites.fixed], sites.how


def describe(arch: str, policy: ErasePolicy, activation: str | None = None,
             shape: tuple[int, int, int] | None = None) -> str:
    """The report ``--arch`` prints."""
    model, design_shape = build_arch(arch, activation)
    shape = shape or design_shape
    blocks, fixed, how = structure(model)
    try:
        record = plan_erase(model, policy, input_shape=shape)
    except ValueError as err:
        record, refusal = None, str(err)
    erased = set(record.sites) if record else set()
    lines = [f"{arch}: {len(blocks)} blocks, {sum(len(s) for _, s in blocks)} sites in blocks, "
             f"{len(fixed)} fixed ({how})",
             f"fixed sites (never erased): {', '.join(fixed) or 'none'}"]
    width = len(str(len(blocks)))
    for index, (name, sites) in enumerate(blocks, 1):
        marked = [f"[{s}]" if s in erased else s for s in sites]
        lines.append(f"  block {index:>{width}}  {name}: {', '.join(marked)}")
    relus = count_relus(model, shape)
    lines.append(f"ReLU/PReLU evaluations per {'x'.join(map(str, shape))} image: {relus:,}")
    if record is None:
        lines.append(f"erase {policy.method.describe()}: refused: {refusal}")
        return "\n".join(lines) + "\n"
    lines.append(f"erase {policy.method.describe()}: {len(record.sites)} site(s) "
                 f"-> {policy.replace} in {len(record.blocks)}/{record.num_blocks} blocks, marked [site] above")
    erased_model = copy.deepcopy(model)
    apply_erase(erased_model, policy, input_shape=shape)
    after = count_relus(erased_model, shape)
    lines.append(f"ReLU/PReLU evaluations after the erase: {after:,} ({after - relus:+,})")
    return "\n".join(lines) + "\n"


def _shape(text: str) -> tuple[int, int, int]:
    parts = tuple(int(p) for p in text.lower().split("x"))
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"{text!r}: give C x H x W, e.g. 3x32x32")
    return parts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m erasenet.models", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", type=Path, metavar="FILE",
                        help="replace the generated table inside FILE (e.g. docs/model_zoo.md), keeping its prose")
    parser.add_argument("--arch", help="describe one network: a zoo name, torchvision:<arch> or timm:<arch>")
    parser.add_argument("--erase", default="last", metavar="LOCATION", help="last, first, all or a site index")
    parser.add_argument("--proportion", type=float, default=0.5)
    parser.add_argument("--replace", default="identity",
                        help="identity, prelu (one slope per site) or prelu_channel (one per channel)")
    parser.add_argument("--activation", help="external networks: relu (default), relu6 or a class path")
    parser.add_argument("--input", type=_shape, metavar="CxHxW", help="input size for the ReLU count")
    parser.add_argument("names", nargs="*", help="only these registry names (default: all)")
    args = parser.parse_args(argv)
    if args.arch:
        print(describe(args.arch, ErasePolicy(EraseReLU(args.erase, args.proportion), args.replace), args.activation,
                       args.input), end="")
        return 0
    table = render_table(args.names or None)
    if args.write:
        old = args.write.read_text() if args.write.exists() else ""
        args.write.write_text(splice_table(old, table))
        print(f"wrote {args.write}")
    else:
        print(table, end="")
        print(("\n" + legend(table)) if legend(table) else "", end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
