"""``stoax train charlm``: the character-level language model, with recurrent dropout and
without (:mod:`stoax.examples.charlm`)."""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path
from typing import Any

DEFAULT_OUT = Path("runs/charlm")

DESCRIPTION = textwrap.fill(
    "Train a character-level language model on the Python language reference that ships with "
    "Python (pydoc_data) twice -- with dropout in the recurrent layers (--dropout-mode) and "
    "without -- and compare validation loss and perplexity. Everything random follows from "
    "--seed, so a run can be repeated, and resumed, bit for bit.",
    width=88,
)

EXAMPLES = """\
examples:
  stoax train charlm                            # LSTM, variational dropout 0.25 vs none
  stoax train charlm --dropout-mode per-step --rate 0.2 --out /tmp/charlm
  stoax train charlm --resume --epochs 30       # continue the runs saved in --out
"""

# command-line spelling -> RNN dropout_mode
MODES = {"variational": "variational", "per-step": "per_step", "none": "none"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from stoax.cli.train import _positive_int, add_common_arguments
    from stoax.examples.charlm import MODELS, Config

    defaults = Config()
    add_common_arguments(parser, defaults, DEFAULT_OUT)
    parser.add_argument(
        "--model",
        choices=sorted(MODELS),
        default=defaults.model,
        help="the model to train (default: %(default)s)",
    )
    parser.add_argument(
        "--dropout-mode",
        choices=sorted(MODES),
        default="variational",
        help="dropout in the recurrent layers: 'variational' (one mask per sequence on inputs, "
        "state and outputs), 'per-step' (a fresh mask at every step), 'none' (inputs and "
        "outputs only, nothing on the recurrent state) (default: %(default)s)",
    )
    parser.add_argument(
        "--hidden",
        type=_positive_int,
        default=defaults.hidden,
        help="units of each recurrent layer (default: %(default)s)",
    )
    parser.add_argument(
        "--layers",
        type=_positive_int,
        default=defaults.layers,
        help="number of recurrent layers (default: %(default)s)",
    )
    parser.add_argument(
        "--train-chars",
        type=int,
        default=defaults.train_chars,
        help="characters of training text, from the start (0: all 418k) (default: %(default)s)",
    )


def make_config(args: argparse.Namespace) -> Any:
    """The example's :class:`~stoax.examples.charlm.Config` from the parsed options."""
    from stoax.cli.train import UsageError
    from stoax.examples import charlm

    if args.train_chars < 0:
        raise UsageError(f"--train-chars must be 0 (all) or positive, got {args.train_chars}.")
    return charlm.Config(
        seed=args.seed,
        epochs=args.epochs,
        rate=args.rate,
        dropout_mode=MODES[args.dropout_mode],
        model=args.model,
        hidden=args.hidden,
        layers=args.layers,
        train_chars=args.train_chars,
    )
