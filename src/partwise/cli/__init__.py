"""The ``partwise`` command line: train, resume, eval, predict, inspect, export, recipes, demo.

Bad input (a bad option, a missing file, malformed YAML, invalid recipe keys or values, an unavailable
device, a data file with bad lines, an existing run directory, damaged run files, a checkpoint from
another model) prints one line starting with ``partwise: error:`` (or ``partwise CMD: error:`` for a
bad option) and exits with code 2, without a traceback; every check runs before anything is written.
A bug in partwise prints its traceback, says to report it, and exits with code 1.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Callable
from typing import NoReturn

from .. import __version__

__all__ = ["main"]

EXAMPLES = {
    "train": "partwise train recipes/g2p.yaml training.batch_size=32 plan.0.epochs=2 run_dir=runs/try",
    "train_packaged": "partwise train g2p   # a packaged recipe by name (partwise recipes lists them)",
    "resume": "partwise resume runs/g2p",
    "eval": "partwise eval runs/g2p --split test --beam 5",
    "eval_ensemble": "partwise eval runs/g2p-seed1 runs/g2p-seed2 --split test   # an ensemble of two runs",
    "predict": "partwise predict runs/g2p partwise pytorch   |   echo tokenizer | partwise predict runs/g2p -",
    "predict_pairs": "partwise predict runs/inflection 'walk <VBD>' --join ''   |   "
                     "partwise predict RUN --file inputs.txt",
    "inspect": "partwise inspect recipes/g2p.yaml plan.1.train.encoder=1e-5",
    "export": "partwise export runs/g2p_t5 models/g2p_t5   "
              "# then AutoModelForSeq2SeqLM.from_pretrained('models/g2p_t5')",
    "recipes": "partwise recipes   |   partwise recipes copy g2p my_recipes/   |   partwise recipes path g2p",
    "demo": "partwise demo",
}


DATA_HELP = """\
your own data (a recipe's data section; docs: guides/own-data.md, 'Pair files'):
  data: {name: pairs, train: train.tsv, dev: dev.tsv, test: test.tsv,
         source: {tokenize: char}, target: {tokenize: space}}
  files: TSV (source<TAB>target), CSV (two columns) or JSON lines ({"source": .., "target": ..}),
         one pair per line, chosen by extension (.tsv/.txt, .csv, .jsonl) or data.format; UTF-8
         unless data.encoding; every bad line is reported at once.
  tokenize per side: char | space | regex (pattern: ...) | hf (path: a local tokenizer folder)
  decoding limit: 1.5 x the longest training target + 5 unless eval.max_len (or --max-len);
  outputs that reach it are counted and warned about."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``partwise train: error: ... (see partwise train --help)``), exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see `{self.prog} --help`)\n")


def _count(option: str, example: str) -> Callable[[str], int]:
    """An argparse ``type=`` for whole numbers >= 1, with a message naming the option and an example."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = 0
        if value < 1:
            raise argparse.ArgumentTypeError(f"{option} {text!r} must be a whole number >= 1 (e.g. {option} {example})")
        return value

    parse.__name__ = option  # argparse names the type in some messages
    return parse


def _minutes(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (0 < value < float("inf")):
        raise argparse.ArgumentTypeError(f"--minutes {text!r} must be a number of minutes > 0 (e.g. --minutes 3)")
    return value


def _parsers() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    parser = _Parser(prog="partwise", description="Train encoder-decoder models part by part.",
                     epilog="examples:\n  " + "\n  ".join(EXAMPLES.values()),
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"partwise {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    subs: dict[str, argparse.ArgumentParser] = {}

    def add(name: str, help_: str, data_help: bool = False) -> argparse.ArgumentParser:
        examples = [v for k, v in EXAMPLES.items() if k == name or k.startswith(f"{name}_")]
        epilog = "example:\n  " + "\n  ".join(examples) + (f"\n\n{DATA_HELP}" if data_help else "")
        subs[name] = sub.add_parser(name, help=help_, description=help_, epilog=epilog,
                                    formatter_class=argparse.RawDescriptionHelpFormatter)
        return subs[name]

    max_steps = _count("--max-steps", "100")
    p = add("train", "train a recipe into its run directory", data_help=True)
    p.add_argument("recipe", help="recipe YAML file, e.g. recipes/g2p.yaml, or a packaged recipe's name, e.g. g2p")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="override recipe values (dotted keys)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing run directory (only ever a partwise run; see the docs, 'Concepts')")
    p.add_argument("--max-steps", type=max_steps, default=None, help="stop after N optimizer steps (resumable)")

    p = add("resume", "continue an interrupted run exactly where its last checkpoint left it")
    p.add_argument("run_dir")
    p.add_argument("--max-steps", type=max_steps, default=None, help="stop after N optimizer steps in total")
    p.add_argument("--allow-plan-change", action="store_true",
                   help="continue although the plan in config.yaml differs from the checkpoint's (e.g. a longer "
                        "last phase); the change is recorded in plan_changes.txt")
    p.add_argument("--allow-data-change", action="store_true",
                   help="continue although the training data or its settings (rows, contents, batch size, "
                        "grad_accum, seed) differ from the checkpoint's; the change is recorded in plan_changes.txt")

    beam, max_len = _count("--beam", "5"), _count("--max-len", "60")
    max_len_help = ("decoding limit in tokens (default: the recipe's eval.max_len, else 1.5 x the longest training "
                    "target + 5); outputs that reach it are counted and warned about")
    p = add("eval", "score a run's best checkpoint (the latest when it kept no best) on a split: the task's "
                    "metrics (seq2seq: sequence and token error rates, WER/PER for G2P)", data_help=True)
    p.add_argument("run_dir", nargs="+", help="a run directory; several: decode with their ensemble (the mean of "
                   "their log-probabilities per step)")
    p.add_argument("--split", choices=["dev", "test"], default="test")
    p.add_argument("--beam", type=beam, default=None, help="beam size >= 1 (default: the recipe's)")
    p.add_argument("--max-len", type=max_len, default=None, help=max_len_help)

    p = add("predict", "predict outputs for inputs given as arguments, in a file, or on stdin ('-'), with the "
                       "run's best checkpoint; prints input<TAB>output, an empty output as <empty>", data_help=True)
    p.add_argument("run_dir", help="a run directory (run directories right after it form an ensemble)")
    p.add_argument("inputs", nargs="*", help="source texts, tokenised like the run's training sources")
    p.add_argument("--file", default=None, help="a file with one input per line ('-' for stdin)")
    p.add_argument("--beam", type=beam, default=None, help="beam size >= 1 (default: the recipe's)")
    p.add_argument("--max-len", type=max_len, default=None, help=max_len_help)
    p.add_argument("--join", default=None, metavar="TEXT",
                   help="put TEXT between output tokens (default: from the target tokenisation: '' for characters, "
                        "' ' for space and regex tokens, the tokenizer's own for hf)")

    p = add("inspect", "print the parts table and the plan's dry run, without training", data_help=True)
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*", metavar="key=value")

    p = add("export", "write a run's Hugging Face model (model: {name: hf}) as a from_pretrained directory")
    p.add_argument("run_dir")
    p.add_argument("out_dir", help="a new directory for config.json and model.safetensors")
    p.add_argument("--latest", action="store_true", help="export the latest checkpoint instead of the best")
    p.add_argument("--adapter", action="store_true",
                   help="a run with adapters: write them as a PEFT adapter folder (default: merged into the model)")

    p = add("recipes", "list the recipes shipped with partwise, copy one out to edit, or print its path")
    p.add_argument("action", nargs="?", choices=["list", "copy", "path"], default="list")
    p.add_argument("name", nargs="?", default=None, help="a packaged recipe's name, e.g. g2p")
    p.add_argument("dest", nargs="?", default=None, help="copy: the folder to write into (default: .)")

    p = add("demo", "train G2P on CMUdict for a few minutes and show the results")
    p.add_argument("--run-dir", default="runs/demo", help="where the demo writes (a previous demo there is replaced)")
    p.add_argument("--minutes", type=_minutes, default=None, help="training time budget (default: the demo's)")
    return parser, subs


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Options may come anywhere among the positional arguments (``predict RUN --beam 3 word``)."""
    parser, subs = _parsers()
    if argv and argv[0] in subs:
        args = subs[argv[0]].parse_intermixed_args(argv[1:])
        args.command = argv[0]
        return args
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``partwise`` console script; returns the exit code."""
    try:
        args = parse_args(sys.argv[1:] if argv is None else list(argv))
    except SystemExit as e:  # --help (0) or a bad argument (2, its one line already printed)
        return e.code if isinstance(e.code, int) else 2
    try:
        return _run(args)
    except KeyboardInterrupt:
        print("partwise: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - user-facing errors become one line and exit code 2
        if not _user_error(e):
            traceback.print_exc()
            print(f"partwise: internal error ({type(e).__name__}): this is a bug in partwise, not a problem with "
                  "your input; please report it with the traceback above and the command you ran", file=sys.stderr)
            return 1
        print(f"partwise: error: {_one_line(e)}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    from .._run._runfolder import RunFolder
    from . import _commands as cmd

    if args.command == "train":
        words = [w for w in args.overrides if "=" not in w]
        if words:
            raise _bad(f"override {words[0]!r} is not key=value (e.g. training.batch_size=32)")
        return cmd.train(args.recipe, args.overrides, args.overwrite, args.max_steps)
    if args.command == "resume":
        return cmd.resume(args.run_dir, args.max_steps, args.allow_plan_change, args.allow_data_change)
    if args.command == "eval":
        return cmd.evaluate(args.run_dir, args.split, args.beam, args.max_len)
    if args.command == "predict":
        if "-" in args.inputs and args.file is not None:
            raise _bad(f"predict: inputs on stdin ('-') and --file {args.file!r} conflict; give one of them")
        inputs = [w for w in args.inputs if w != "-"]
        runs = [args.run_dir]
        while inputs and RunFolder(inputs[0]).config.is_file():  # more runs: an ensemble
            runs.append(inputs.pop(0))
        return cmd.predict(runs, inputs, "-" if "-" in args.inputs else args.file, args.beam,
                           args.max_len, args.join)
    if args.command == "inspect":
        return cmd.inspect(args.recipe, args.overrides)
    if args.command == "export":
        from ._export import export_command

        return export_command(args.run_dir, args.out_dir, "latest" if args.latest else "best", args.adapter)
    if args.command == "recipes":
        from ._recipes import recipes_command

        return recipes_command(args.action, args.name, args.dest)
    from ._demo import demo

    return demo(args.run_dir, args.minutes)


def _bad(message: str) -> Exception:
    from .._errors import ConfigError

    return ConfigError([message])


def _user_error(e: BaseException) -> bool:
    """Errors in what the user gave (recipe, files, options, data, a run's files): one line, exit 2."""
    from .._errors import PartwiseError

    return isinstance(e, PartwiseError | FileNotFoundError | IsADirectoryError | NotADirectoryError
                      | PermissionError | UnicodeDecodeError)


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


if __name__ == "__main__":
    sys.exit(main())
