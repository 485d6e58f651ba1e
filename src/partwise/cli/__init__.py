"""The ``partwise`` command line: train, resume, eval, predict, inspect, export, demo.

Bad input (a missing file, malformed YAML, invalid recipe keys or values, a data file with bad lines,
an existing run directory, a checkpoint from another model) prints one line starting with
``partwise: error:`` and exits with code 2, without a traceback and without overwriting anything.
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["main"]

EXAMPLES = {
    "train": "partwise train recipes/g2p.yaml training.batch_size=32 plan.0.epochs=2 run_dir=runs/try",
    "resume": "partwise resume runs/g2p",
    "eval": "partwise eval runs/g2p --split test --beam 5",
    "predict": "partwise predict runs/g2p partwise pytorch   |   echo tokenizer | partwise predict runs/g2p -",
    "inspect": "partwise inspect recipes/g2p.yaml plan.1.train.encoder=1e-5",
    "export": "partwise export runs/g2p_t5 models/g2p_t5   # then AutoModelForSeq2SeqLM.from_pretrained('models/g2p_t5')",
    "demo": "partwise demo",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="partwise", description="Train encoder-decoder models part by part.",
                                     epilog="examples:\n  " + "\n  ".join(EXAMPLES.values()),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_, description=help_, epilog=f"example:\n  {EXAMPLES[name]}",
                              formatter_class=argparse.RawDescriptionHelpFormatter)

    p = add("train", "train a recipe into its run directory")
    p.add_argument("recipe", help="recipe YAML file, e.g. recipes/g2p.yaml")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="override recipe values (dotted keys)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    p.add_argument("--max-steps", type=int, default=None, help="stop after N optimizer steps (resumable)")

    p = add("resume", "continue an interrupted run exactly where its last checkpoint left it")
    p.add_argument("run_dir")
    p.add_argument("--max-steps", type=int, default=None, help="stop after N optimizer steps in total")

    p = add("eval", "score a run's best checkpoint on a split (the task's metrics, e.g. WER and PER)")
    p.add_argument("run_dir")
    p.add_argument("--split", choices=["dev", "test"], default="test")
    p.add_argument("--beam", type=int, default=None, help="beam size (default: the recipe's)")

    p = add("predict", "predict outputs for words given as arguments, in a file, or on stdin ('-')")
    p.add_argument("run_dir")
    p.add_argument("words", nargs="*")
    p.add_argument("--file", default=None, help="a file with one word per line ('-' for stdin)")
    p.add_argument("--beam", type=int, default=None)

    p = add("inspect", "print the parts table and the plan's dry run, without training")
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*", metavar="key=value")

    p = add("export", "write a run's Hugging Face model (model: {name: hf}) as a from_pretrained directory")
    p.add_argument("run_dir")
    p.add_argument("out_dir", help="a new directory for config.json and model.safetensors")
    p.add_argument("--latest", action="store_true", help="export the latest checkpoint instead of the best")

    p = add("demo", "train G2P on CMUdict for a few minutes and show the results")
    p.add_argument("--run-dir", default="runs/demo", help="where the demo writes (a previous demo there is replaced)")
    p.add_argument("--minutes", type=float, default=None, help="training time budget (default: the demo's)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``partwise`` console script; returns the exit code."""
    args = _parser().parse_args(argv)
    from . import _commands as cmd

    try:
        if args.command == "train":
            words = [w for w in args.overrides if "=" not in w]
            if words:
                raise _bad(f"override {words[0]!r} is not key=value (e.g. training.batch_size=32)")
            return cmd.train(args.recipe, args.overrides, args.overwrite, args.max_steps)
        if args.command == "resume":
            return cmd.resume(args.run_dir, args.max_steps)
        if args.command == "eval":
            return cmd.evaluate(args.run_dir, args.split, args.beam)
        if args.command == "predict":
            words = [w for w in args.words if w != "-"]
            return cmd.predict(args.run_dir, words, "-" if "-" in args.words else args.file, args.beam)
        if args.command == "inspect":
            return cmd.inspect(args.recipe, args.overrides)
        if args.command == "export":
            from ._hf import export_command

            return export_command(args.run_dir, args.out_dir, "latest" if args.latest else "best")
        from ._demo import demo

        return demo(args.run_dir, args.minutes)
    except KeyboardInterrupt:
        print("partwise: interrupted; the last complete checkpoint is intact (partwise resume RUN_DIR)", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - user-facing errors become one line and exit code 2
        if not _user_error(e):
            raise
        print(f"partwise: error: {_one_line(e)}", file=sys.stderr)
        return 2


def _bad(message: str) -> Exception:
    from .._errors import ConfigError

    return ConfigError([message])


def _user_error(e: BaseException) -> bool:
    from .._errors import ConfigError, PartError
    from ..data import DataFormatError

    return isinstance(e, ConfigError | PartError | DataFormatError | FileNotFoundError | UnicodeDecodeError
                      | IsADirectoryError | PermissionError)


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


if __name__ == "__main__":
    sys.exit(main())
