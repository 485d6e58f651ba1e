"""The ``partwise`` command line."""

from __future__ import annotations

import argparse
import sys

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="partwise", description="Train encoder-decoder models part by part.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="train G2P on CMUdict for a few minutes (not built yet)")
    args = parser.parse_args(argv)
    if args.command == "demo":
        print("partwise demo: not built yet (arrives with the trainer); run `make test` meanwhile.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
