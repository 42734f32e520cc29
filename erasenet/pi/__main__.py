"""python -m erasenet.pi PATH: one private inference under SPU's Cheetah for a run, a sweep or an exported network.

``python -m erasenet.pi setup`` creates the environment SPU runs in (``.venv-pi``, pip only);
``python -m erasenet.pi export RUN_DIR [OUT_DIR]`` only exports the delivered network.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..common.errors import UserError
from . import measure


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["setup"]:
        python = measure.setup(argv[1] if len(argv) > 1 else measure.ENV_DIR)
        print(f"private-inference environment ready: {python}")
        return 0
    parser = argparse.ArgumentParser(prog="python -m erasenet.pi", description=__doc__.splitlines()[0])
    parser.add_argument("path", help="a run directory, a sweep directory, or an exported network (network.json); "
                                     "'export RUN_DIR' only exports, 'setup' creates the SPU environment")
    parser.add_argument("out", nargs="?", help="with export: where to write (default RUN_DIR/pi_export)")
    parser.add_argument("--python", help="the SPU environment's interpreter (default: $ERASENET_PI_PYTHON, .venv-pi)")
    parser.add_argument("--image", type=int, default=0, help="index of the test image to infer (default 0)")
    parser.add_argument("--fraction-bits", type=int, default=measure.FRACTION_BITS,
                        help="fixed-point fraction bits of the 64-bit ring (default 18)")
    if argv[:1] == ["export"]:
        argv = argv[1:]
        args = parser.parse_args(argv)
        try:
            out = measure.export_run(Path(args.path), args.image, Path(args.out) if args.out else None)
        except (UserError, ValueError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(f"exported to {out}")
        return 0
    args = parser.parse_args(argv)
    try:
        results = measure.measure_path(args.path, python=args.python, index=args.image,
                                       fraction_bits=args.fraction_bits)
    except (UserError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(measure.table(results))
    for where, _ in results:
        print(f"wrote {where / measure.COST_FILE}")
    if not (Path(args.path) / measure.NETWORK_FILE).is_file():
        print(f"the summary picks the cost up when it is rebuilt: python -m erasenet.results {args.path}")
    return 0 if all(r["check"]["passed"] for _, r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
