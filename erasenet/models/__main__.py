"""``python -m erasenet.models [--write FILE]``: print the zoo table, or update it inside FILE.

``python -m erasenet.models --arch ARCH [--erase LOCATION --proportion P]``: print one network's blocks, its
ReLU sites and what an erase policy would change, without training. ARCH is a zoo name (``resnet110``) or
``torchvision:<arch>`` / ``timm:<arch>``.

The budgeted methods preview their count the same way, before anything trains: ``--cull 2`` (DeepReDuce's
culling, ``erase.cull_stages=[2]``; ``--thin``, ``--fixed-sites``) counts the culled network, ``--budget N`` (SNL's
gates, ``erase.budget=N``; a fraction if N <= 1) the most its gates keep; both print EraseReLU's count at the
proportions 0.25, 0.5, 0.75 and 1 beside it, the nearest marked, so matched budgets need no arithmetic.
``--input CxHxW`` counts for another input (``1x8x8``: grey-scale digits; the network takes its channels).
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch
import torch.nn as nn

from ..erase import Cull, ErasePolicy, EraseReLU, Gates, apply_erase, find_sites, plan_erase
from ..erase.gates import resolve_budget
from ..erase.rectifiers import count_relus
from .registry import builder_options, create_model, input_shape, list_models
from .zoo import legend, render_table, splice_table

EXTERNAL_INPUT = (3, 224, 224)
ERASERELU_PROPORTIONS = (0.25, 0.5, 0.75, 1.0)  # EraseReLU's candidates, beside a budgeted count


def build_arch(arch: str, activation: str | None = None,
               in_chans: int | None = None) -> tuple[nn.Module, tuple[int, int, int]]:
    """The network ``arch`` names, on the meta device, with the input it is designed for; ``in_chans`` overrides the
    input channels it is built for (a grey-scale input)."""
    library, _, name = arch.partition(":")
    with torch.device("meta"):
        if name:
            if library not in list_models(external=True) or library in list_models():
                raise SystemExit(f"--arch {arch}: the library before ':' must be torchvision or timm")
            options = {"arch": name} | ({"activation": activation} if activation else {})
            channels = in_chans or EXTERNAL_INPUT[0]
            try:
                return (create_model(library, num_classes=1000, in_chans=channels, **options),
                        (channels, *EXTERNAL_INPUT[1:]))
            except ValueError as err:
                raise SystemExit(f"--arch {arch}: {err}") from None
        if arch not in list_models():
            raise SystemExit(f"--arch {arch}: not a zoo model; choose one of {', '.join(list_models())}, "
                             f"or torchvision:<arch> / timm:<arch>")
        shape = input_shape(arch)
        shape = (in_chans or shape[0], *shape[1:])
        return create_model(arch, num_classes=builder_options(arch)["num_classes"], in_chans=shape[0]), shape


def structure(model: nn.Module) -> tuple[list[tuple[str, list[str]]], list[str], str]:
    """``(blocks as (name, site names), fixed sites, how they were found)``."""
    sites = find_sites(model)
    return [(b.name, b.site_names) for b in sites.blocks], [s.name for s in sites.fixed], sites.how


def describe(arch: str, policy: ErasePolicy, activation: str | None = None,
             shape: tuple[int, int, int] | None = None) -> str:
    """The report ``--arch`` prints."""
    model, design_shape = build_arch(arch, activation, shape[0] if shape else None)
    shape = shape or design_shape
    blocks, fixed, how = structure(model)
    try:
        record = plan_erase(model, policy, input_shape=shape)
    except ValueError as err:
        record, refusal = None, str(err)
    erased = set(record.sites) if record else set()
    lines = [f"{arch}: {len(blocks)} blocks, {sum(len(s) for _, s in blocks)} sites in blocks, "
             f"{len(fixed)} fixed ({how})",
             f"fixed sites (outside every block, erased only with erase.fixed_sites): {', '.join(fixed) or 'none'}"]
    width = len(str(len(blocks)))
    for index, (name, sites) in enumerate(blocks, 1):
        marked = [f"[{s}]" if s in erased else s for s in sites]
        lines.append(f"  block {index:>{width}}  {name}: {', '.join(marked)}")
    relus = count_relus(model, shape)
    lines.append(f"ReLU/PReLU evaluations per {'x'.join(map(str, shape))} image: {relus:,}")
    if record is None:
        lines.append(f"{_policy_name(policy)}: refused: {refusal}")
        return "\n".join(lines) + "\n"
    if isinstance(policy.method, Gates):
        budget = resolve_budget(policy.method.budget, relus)
        lines.append(f"{_policy_name(policy)}: a gate on each of {len(record.sites)} site(s), marked [site] above; "
                     f"binarising keeps at most {budget:,} of {relus:,} ReLU/PReLU evaluations "
                     f"({100 * budget / relus:.1f}%)")
        if budget >= relus:
            lines.append(f"  a budget at or above the network's {relus:,} erases nothing: give fewer ReLUs")
        return "\n".join(lines + _eraserelu_beside(model, shape, policy, budget)) + "\n"
    lines.append(f"{_policy_name(policy)}: {len(record.sites)} site(s) -> {policy.replace} in "
                 f"{len(record.blocks)}/{record.num_blocks} blocks, marked [site] above")
    after = _count_after(model, policy, shape)
    lines.append(f"ReLU/PReLU evaluations after the erase: {after:,} ({after - relus:+,}; "
                 f"{100 * after / relus:.1f}% kept)")
    if isinstance(policy.method, Cull):
        lines += _eraserelu_beside(model, shape, policy, after)
    return "\n".join(lines) + "\n"


def _policy_name(policy: ErasePolicy) -> str:
    method = policy.method
    if isinstance(method, Gates):
        return f"gates erase.budget={method.budget:g}"
    if isinstance(method, Cull):
        return (f"cull erase.cull_stages={list(method.stages)} erase.thin={str(method.thin).lower()} "
                f"erase.fixed_sites={str(policy.fixed_sites).lower()}")
    return f"erase location={method.location} proportion={method.proportion:g}"


def _count_after(model: nn.Module, policy: ErasePolicy, shape: tuple[int, int, int]) -> int:
    erased = copy.deepcopy(model)
    apply_erase(erased, policy, input_shape=shape)
    return count_relus(erased, shape)


def _eraserelu_beside(model: nn.Module, shape: tuple[int, int, int], policy: ErasePolicy, count: int) -> list[str]:
    """EraseReLU's count at its candidate proportions (same location and replacement), the nearest to ``count``
    marked: the budgets a method comparison would match."""
    location = getattr(policy.method, "location", "last")
    counts = {p: _count_after(model, ErasePolicy(EraseReLU(location, p), policy.replace), shape)
              for p in ERASERELU_PROPORTIONS}
    nearest = min(counts, key=lambda p: (abs(counts[p] - count), p))
    return [f"EraseReLU (location {location}) beside it:"] + [
        f"  proportion {p:g}: {n:,} ({n - count:+,}){'  <- nearest' if p == nearest else ''}"
        for p, n in counts.items()]


def _shape(text: str) -> tuple[int, int, int]:
    parts = tuple(int(p) for p in text.lower().split("x"))
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"{text!r}: give C x H x W, e.g. 3x32x32")
    return parts


def _stages(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in text.strip("[]").split(",") if p.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give 1-based stage numbers, e.g. 2 or 1,2") from None


def _policy(args: argparse.Namespace, parser: argparse.ArgumentParser) -> ErasePolicy:
    """The erase policy the options describe: culling, gates, or EraseReLU's rule."""
    if args.budget is not None and (args.cull or args.thin):
        parser.error("--budget (gates) and --cull/--thin (culling) are two methods: give one")
    if args.cull or args.thin:
        return ErasePolicy(Cull(args.cull or (), args.thin), args.replace, args.fixed_sites)
    if args.budget is not None:
        if args.budget <= 0:
            parser.error(f"--budget {args.budget:g}: give a positive count, or a fraction in (0, 1]")
        return ErasePolicy(Gates(args.budget), "identity", True)
    return ErasePolicy(EraseReLU(args.erase, args.proportion), args.replace, args.fixed_sites)


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
    parser.add_argument("--cull", type=_stages, metavar="STAGES",
                        help="DeepReDuce's culling: the 1-based stages to cull, e.g. 2 or 1,2 (erase.cull_stages)")
    parser.add_argument("--thin", action="store_true", help="with --cull: thin the other stages (erase.thin)")
    parser.add_argument("--fixed-sites", action="store_true",
                        help="also erase the ReLUs outside every block, a stem's (erase.fixed_sites)")
    parser.add_argument("--budget", type=float, metavar="N",
                        help="SNL's gates: ReLUs per image kept, or a fraction <= 1 of the original's (erase.budget)")
    parser.add_argument("--input", type=_shape, metavar="CxHxW",
                        help="input size for the ReLU count (its channels build the network: 1x8x8 for digits)")
    parser.add_argument("names", nargs="*", help="only these registry names (default: all)")
    args = parser.parse_args(argv)
    if args.arch:
        print(describe(args.arch, _policy(args, parser), args.activation, args.input), end="")
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
