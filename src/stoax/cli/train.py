"""``stoax train digits|charlm``: train an example with and without dropout.

``digits``: two runs of one model on scikit-learn's bundled 8x8 digits -- dropout at ``--rate``
and no dropout -- from the same seed, split and initial weights. Prints a table of train and test
accuracy and the generalisation gap. ``charlm``: a character-level language model on the Python
language reference (``pydoc_data``), with recurrent dropout (``--dropout-mode``) and without;
the table gives validation loss and perplexity (options in :mod:`stoax.cli._charlm`). Both
write to ``--out``:

* ``dropout.safetensors``, ``no_dropout.safetensors``: a checkpoint of each run, after every epoch
* ``curves.png``: accuracy and loss per epoch, both runs, train and test
* ``results.json``: the table's numbers
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

__all__ = ["add_arguments", "run"]

EXAMPLES = """\
examples:
  stoax train digits                       # defaults: both runs, results in runs/digits
  stoax train digits --epochs 80 --rate 0.3 --out /tmp/digits
  stoax train digits --resume --epochs 80  # continue the runs saved in --out
  stoax train charlm                       # LSTM, variational dropout vs none, runs/charlm
"""

DEFAULT_OUT = Path("runs/digits")
OUTPUTS = ("dropout.safetensors", "no_dropout.safetensors", "curves.png", "results.json")


class UsageError(Exception):
    """Bad input from the command line: reported on stderr with exit status 2."""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(
            f"the dropout rate is a probability in [0, 1), got {value}"
        )
    return value


DESCRIPTION = textwrap.fill(
    "Train an example model twice -- with dropout and without -- and compare how well each "
    "generalises. Everything random follows from --seed, so a run can be repeated, and "
    "resumed, bit for bit.",
    width=88,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``stoax train``: one sub-command per example."""
    from stoax.cli import _charlm

    parser.description = DESCRIPTION
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EXAMPLES
    examples = parser.add_subparsers(dest="example", metavar="EXAMPLE", required=True)
    digits = examples.add_parser(
        "digits",
        help="an MLP or a Transformer on scikit-learn's 8x8 handwritten digits",
        description=DESCRIPTION,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_digits_arguments(digits)
    charlm = examples.add_parser(
        "charlm",
        help="a character-level LSTM language model on the Python language reference",
        description=_charlm.DESCRIPTION,
        epilog=_charlm.EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _charlm.add_arguments(charlm)


def add_common_arguments(parser: argparse.ArgumentParser, defaults: Any, out: Path) -> None:
    """The options every example has: --seed, --epochs, --rate, --out, --resume/--overwrite,
    --no-progress."""
    parser.add_argument(
        "--seed",
        type=int,
        default=defaults.seed,
        help="seed of the split, initial weights, batch order and dropout (default: %(default)s)",
    )
    parser.add_argument(
        "--epochs",
        type=_positive_int,
        default=defaults.epochs,
        help="number of epochs of each run (default: %(default)s)",
    )
    parser.add_argument(
        "--rate",
        type=_rate,
        default=defaults.rate,
        help="dropout rate of the dropout run (default: %(default)s)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=out,
        help="output folder for checkpoints, curves.png and results.json; created if missing, "
        "but not its parent unless it is the default (default: %(default)s)",
    )
    existing = parser.add_mutually_exclusive_group()
    existing.add_argument(
        "--resume",
        action="store_true",
        help="continue the runs saved in --out (same options; --epochs may grow)",
    )
    existing.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a run already in --out instead of refusing",
    )
    parser.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        help="do not show progress bars",
    )


def _add_digits_arguments(parser: argparse.ArgumentParser) -> None:
    from stoax.examples.digits import MODELS, Config

    add_common_arguments(parser, Config(), DEFAULT_OUT)
    parser.add_argument(
        "--model",
        choices=sorted(MODELS),
        default=Config().model,
        help="the model to train: 'mlp' (64 pixels -> 256 -> 256 -> 10) or 'transformer' (2 "
        "layers over the image's 8 rows) (default: %(default)s)",
    )


def run(args: argparse.Namespace) -> int:
    """Run ``stoax train``; returns the exit status."""
    from stoax.train import CheckpointError

    try:
        from stoax.cli import _charlm

        default_out = _charlm.DEFAULT_OUT if args.example == "charlm" else DEFAULT_OUT
        out = _prepare_out(
            args.out,
            resume=args.resume,
            overwrite=args.overwrite,
            # The default's parent (runs/) is made as needed; for a folder the user names, a
            # missing parent is more likely a typo than a wish for a new tree.
            make_parents=args.out == default_out,
        )
        if args.example == "charlm":
            return _charlm.train(args, out)
        return _train(args, out)
    except UsageError as err:
        print(f"stoax train: error: {err}", file=sys.stderr)
        return 2
    except (CheckpointError, FileNotFoundError) as err:
        print(f"stoax train: error: {err}", file=sys.stderr)
        return 1


def _prepare_out(out: Path, *, resume: bool, overwrite: bool, make_parents: bool = False) -> Path:
    """Check (and create) the output folder; refuse to clobber an earlier run silently."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a folder. Choose a folder.")
    if not out.exists():
        parent = out.absolute().parent
        if not parent.is_dir() and not make_parents:
            raise UsageError(
                f"cannot create the output folder {out}: its parent {parent} does not exist. "
                "Create the parent first, or choose another --out."
            )
        if resume:
            raise UsageError(f"nothing to resume: the output folder {out} does not exist.")
        try:
            out.mkdir(parents=make_parents)
        except OSError as err:
            raise UsageError(f"cannot create the output folder {out}: {err.strerror}.") from None
    _check_writable(out)
    found = [name for name in OUTPUTS if (out / name).exists()]
    checkpoints = [name for name in found if name.endswith(".safetensors")]
    if resume and not checkpoints:
        raise UsageError(
            f"nothing to resume in {out}: it holds no checkpoint ({OUTPUTS[0]}, {OUTPUTS[1]}). "
            "Run without --resume to start training."
        )
    if found and not (resume or overwrite):
        raise UsageError(
            f"{out} already holds a run ({', '.join(found)}). Pass --resume to continue it, "
            "--overwrite to replace it, or choose another --out."
        )
    if overwrite:
        for name in found:
            (out / name).unlink()
    return out


def _check_writable(out: Path) -> None:
    try:
        fd, probe = tempfile.mkstemp(dir=out, prefix=".stoax-write-test-")
    except OSError as err:
        raise UsageError(
            f"the output folder {out} is not writable ({err.strerror}). Fix its permissions or "
            "choose another --out."
        ) from None
    os.close(fd)
    os.unlink(probe)


def _train(args: argparse.Namespace, out: Path) -> int:
    from stoax.examples import digits

    config = digits.Config(seed=args.seed, epochs=args.epochs, rate=args.rate, model=args.model)
    start = time.perf_counter()
    histories = digits.run_experiment(config, out, resume=args.resume, progress=args.progress)
    seconds = time.perf_counter() - start
    rows = digits.summary(histories)
    results: dict[str, Any] = {
        "config": dataclasses.asdict(config),
        "runs": rows,
        "seconds": seconds,
    }
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(digits.format_table(rows))
    print(
        f"\n{config.model.upper()} on digits, seed {config.seed}, {seconds:.1f} s. Wrote "
        f"{out / 'curves.png'}, checkpoints and results.json to {out}."
    )
    return 0
