"""``python -m erasenet.models [--write FILE]``: print the zoo table, or update it inside FILE."""

from __future__ import annotations

import argparse
from pathlib import Path

from .zoo import render_table, splice_table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m erasenet.models", description=__doc__)
    parser.add_argument("--write", type=Path, metavar="FILE",
                        help="replace the generated table inside FILE (e.g. docs/model_zoo.md), keeping its prose")
    parser.add_argument("names", nargs="*", help="only these registry names (default: all)")
    args = parser.parse_args(argv)
    table = render_table(args.names or None)
    if args.write:
        old = args.write.read_text() if args.write.exists() else ""
        args.write.write_text(splice_table(old, table))
        print(f"wrote {args.write}")
    else:
        print(table, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
