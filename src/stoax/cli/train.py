"""``stoax train digits|charlm``: train an example with and without dropout.

Two runs of one model -- dropout at ``--rate`` and no dropout -- from the same seed, split and
initial weights: scikit-learn's bundled 8x8 digits (``digits``), or a character-level language
model on the Python language reference (``charlm``, :mod:`stoax.cli._charlm`). Prints a table
of each run's final metrics (accuracy and the generalisation gap, or validation loss and
perplexity), and writes to ``--out``:

* ``dropout.safetensors``, ``no_dropout.safetensors``: a checkpoint of each run, after every epoch
* ``curves.png``: accuracy and loss per epoch, both runs, train and test
* ``results.json``: the table's numbers

A run folder is safe to share and to kill:

* **One run at a time.** A run holds an OS lock (``flock``) on ``--out/.stoax-lock`` while it
  writes; a second run into the same folder refuses, naming the first. The kernel releases the
  lock when its process ends, however it ends, so a lock file left by a killed run blocks nobody.
* **Every file is written atomically** (a temporary file renamed over the old one): a kill leaves
  each file old or new, never half-written. Temporary files of killed runs are removed by the
  next run in that folder.
* **``--overwrite`` replaces the old run only with a finished new one**: the new run trains in a
  hidden folder beside ``--out`` and is swapped in when it has written everything (one atomic
  rename on Linux). A new run that fails or is killed leaves the old run as it was.
* **``--resume`` only continues**: ``--epochs`` may grow, never shrink below the epochs done.
  ``results.json`` is rewritten at the end of a resume and removed at its start (it would
  describe the checkpoints before the resume): the folder's ``results.json``, when present,
  always describes its checkpoints.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import re
import secrets
import sys
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


MAX_SEED = 2**32 - 1  # the seeds JAX's keys and scikit-learn's split both take as they are


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a whole number in [0, {MAX_SEED}], got {text!r}"
        ) from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(
            f"the seed must be in [0, {MAX_SEED}] (2**32 - 1), got {value}"
        )
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
        help="an MLP, a Transformer or a CNN on scikit-learn's 8x8 handwritten digits",
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
        type=_seed,
        default=defaults.seed,
        help="seed of the split, initial weights, batch order and dropout, in [0, 2**32 - 1] "
        "(default: %(default)s)",
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
        help="continue the runs saved in --out (same options; --epochs may grow, not shrink)",
    )
    existing.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a run already in --out instead of refusing; the old run is kept until "
        "the new one has finished",
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
        help="the model to train: 'mlp' (64 pixels -> 256 -> 256 -> 10), 'transformer' (2 "
        "layers over the image's 8 rows) or 'cnn' (4 conv layers with BatchNorm, max pooling, "
        "spatial dropout) (default: %(default)s)",
    )


def run(args: argparse.Namespace) -> int:
    """Run ``stoax train``; returns the exit status."""
    from stoax.train import CheckpointError
    from stoax.train._files import FolderBusyError

    try:
        return _run(args)
    except UsageError as err:
        print(f"stoax train: error: {err}", file=sys.stderr)
        return 2
    except FolderBusyError as err:
        print(
            f"stoax train: error: {args.out} is in use by another run ({err}). Wait for it to "
            "finish, or choose another --out.",
            file=sys.stderr,
        )
        return 1
    except (CheckpointError, OSError, ImportError) as err:
        print(f"stoax train: error: {_strip_errno(err)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            f"stoax train: interrupted. {args.out} holds the last checkpoints saved (continue "
            "with --resume), or, with --overwrite, the previous run.",
            file=sys.stderr,
        )
        return 130


def _strip_errno(err: Exception) -> str:
    return re.sub(r"^\[Errno \d+\] ", "", str(err))


def _example(args: argparse.Namespace) -> tuple[Any, Any, Path, str]:
    """``(example module, its Config from args, its default --out, a title for the summary)``."""
    if args.example == "charlm":
        from stoax.cli import _charlm
        from stoax.examples import charlm

        config = _charlm.make_config(args)
        title = f"Character-level {config.model.upper()} on the Python language reference"
        return charlm, config, _charlm.DEFAULT_OUT, title
    from stoax.examples import digits

    config = digits.Config(seed=args.seed, epochs=args.epochs, rate=args.rate, model=args.model)
    return digits, config, DEFAULT_OUT, f"{config.model.upper()} on digits"


def _run(args: argparse.Namespace) -> int:
    from stoax.train._files import FolderLock

    example, config, default_out, title = _example(args)
    out = args.out
    _restore_interrupted_swap(out)
    _check_out(
        out,
        resume=args.resume,
        # The default's parent (runs/) is made as needed; for a folder the user names, a
        # missing parent is more likely a typo than a wish for a new tree.
        make_parents=out == default_out,
    )
    created = _make_folder(out, make_parents=out == default_out)
    try:
        try:
            lock = FolderLock.acquire(out, command=_lock_command(args, out))
        except PermissionError as err:
            raise UsageError(
                f"the output folder {out} is not writable ({err.strerror}). Fix its permissions "
                "or choose another --out."
            ) from None
        with lock:
            _remove_leftovers(out)
            found = [name for name in OUTPUTS if (out / name).exists()]
            if args.resume and not any(name.endswith(".safetensors") for name in found):
                raise UsageError(
                    f"nothing to resume in {out}: it holds no checkpoint ({OUTPUTS[0]}, "
                    f"{OUTPUTS[1]}). Run without --resume to start training."
                )
            if found and not (args.resume or args.overwrite):
                raise UsageError(
                    f"{out} already holds a run ({', '.join(found)}). Pass --resume to continue "
                    "it, --overwrite to replace it, or choose another --out."
                )
            if args.resume and _check_resume(example, config, out):
                for name in ("results.json", "curves.png"):  # about to describe older weights
                    with contextlib.suppress(FileNotFoundError):
                        (out / name).unlink()
            if args.overwrite and found:
                rows, seconds = _train_beside(args, example, config, out, lock)
            else:
                rows, seconds = _train(args, example, config, out)
    finally:
        if created:  # a run that wrote nothing leaves no empty folder behind
            with contextlib.suppress(OSError):
                out.rmdir()
    print(example.format_table(rows))
    print(
        f"\n{title}, seed {config.seed}, {seconds:.1f} s. Wrote "
        f"{out / 'curves.png'}, checkpoints and results.json to {out}."
    )
    if hasattr(example, "sample"):  # a language model: show what the dropout run writes
        print(f"\nSampled from the dropout run (temperature 0.8):\n{example.sample(config, out)}")
    return 0


def _check_out(out: Path, *, resume: bool, make_parents: bool) -> None:
    """Refuse an unusable ``--out`` before anything is created."""
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


def _make_folder(out: Path, *, make_parents: bool) -> bool:
    """Create ``out`` if missing; return whether this call created it."""
    try:
        out.mkdir(parents=make_parents)
    except FileExistsError:
        return False
    except OSError as err:
        raise UsageError(f"cannot create the output folder {out}: {err.strerror}.") from None
    return True


# -- the files beside --out of an --overwrite run ------------------------------------------------


def _real(out: Path) -> Path:
    """The folder ``out`` names (a symlink followed): the one swapped by ``--overwrite``."""
    return out.resolve()


def _sibling_pattern(out: Path) -> re.Pattern[str]:
    return re.compile(rf"^\.{re.escape(_real(out).name)}\.stoax-(new|old)-[0-9a-f]{{16}}$")


def _siblings(out: Path) -> list[tuple[str, Path]]:
    """``(kind, path)`` of the folders an ``--overwrite`` run keeps beside ``out``: ``new`` (the
    new run being trained) and ``old`` (the old run, on platforms that swap in two renames)."""
    pattern, parent = _sibling_pattern(out), _real(out).parent
    try:
        names = os.listdir(parent)
    except OSError:
        return []
    return [(m[1], parent / name) for name in names if (m := pattern.match(name))]


def _restore_interrupted_swap(out: Path) -> None:
    """Where a swap in two renames (no atomic exchange on this platform) was killed between its
    renames, ``out`` is missing and the old run waits beside it: put it back."""
    if out.exists():
        return
    old = [path for kind, path in _siblings(out) if kind == "old"]
    if len(old) == 1:
        with contextlib.suppress(OSError):  # another run may have put it back just now
            os.rename(old[0], _real(out))


def _remove_leftovers(out: Path) -> None:
    """With ``out`` locked: remove the temporary files of killed writers in it, and the folders
    that killed ``--overwrite`` runs left beside it (a live one would hold ``out``'s lock)."""
    from stoax.train._files import remove_stale_temps, remove_tree

    remove_stale_temps(out)
    for _, path in _siblings(out):
        remove_tree(path)


def _train_beside(
    args: argparse.Namespace, example: Any, config: Any, out: Path, lock: Any
) -> tuple[list[dict[str, Any]], float]:
    """``--overwrite``: train in a new folder beside ``out``, then swap it in for the old run."""
    from stoax.train._files import FolderLock, exchange, remove_tree

    foreign = [name for name in os.listdir(out) if name not in (*OUTPUTS, lock.path.name)]
    if foreign:
        raise UsageError(
            f"--overwrite replaces the whole folder {out}, which also holds files stoax did not "
            f"write ({', '.join(sorted(foreign)[:5])}). Move them out first, or choose another "
            "--out."
        )
    real = _real(out)
    if os.stat(real).st_dev != os.stat(real.parent).st_dev:
        raise UsageError(
            f"--overwrite swaps {out} with a new run folder made beside it, but {out} is a mount "
            "point (another file system than its parent). Empty it by hand and run without "
            "--overwrite, or use a folder inside it as --out."
        )
    token = secrets.token_hex(8)
    new = real.parent / f".{real.name}.stoax-new-{token}"
    new_lock = None
    try:
        new.mkdir()
        new_lock = FolderLock.acquire(new, command=_lock_command(args, out))
        result = _train(args, example, config, new)
        if exchange(new, real):  # one atomic step: out is the new run, `new` the old one
            lock.moved_to(new)
            new_lock.moved_to(real)
        else:  # two renames; killed between them, the next run puts the old one back
            old = real.parent / f".{real.name}.stoax-old-{token}"
            os.rename(real, old)
            lock.moved_to(old)
            os.rename(new, real)
            new_lock.moved_to(real)
            remove_tree(old)
        return result
    finally:
        if new_lock is not None:
            new_lock.release()
        remove_tree(new)  # the old run after the swap; the unfinished new run after a failure


def _lock_command(args: argparse.Namespace, out: Path) -> str:
    return f"stoax train {args.example} --out {out}"


def _check_resume(example: Any, config: Any, out: Path) -> bool:
    """Refuse to resume runs trained with other settings, or with more epochs than ``--epochs``
    (a run cannot be shortened; ``results.json`` would contradict itself). Return whether any
    run has epochs left to train."""
    from stoax import train as st
    from stoax.examples._runs import check_resumable

    left = False
    for stem, _, _ in example.runs(config):
        path = example.checkpoint_path(out, stem)
        if not path.exists():
            left = True
            continue
        check_resumable(config, path)
        history = st.read_checkpoint_metadata(path).get("history") or []
        done = int(history[-1]["epoch"]) if history else 0
        if config.epochs < done:
            raise UsageError(
                f"--epochs {config.epochs} is fewer than the {done} epochs {path} has already "
                f"trained, and a resumed run cannot be shortened. Pass --epochs {done} to report "
                f"it as it is, more to continue it, or --overwrite (without --resume) to train a "
                f"new {config.epochs}-epoch run."
            )
        left = left or done < config.epochs
    return left


def _train(
    args: argparse.Namespace, example: Any, config: Any, folder: Path
) -> tuple[list[dict[str, Any]], float]:
    """Train both runs into ``folder``; write ``curves.png`` and ``results.json`` there."""
    from stoax.train._files import atomic_write_text

    start = time.perf_counter()
    histories = example.run_experiment(config, folder, resume=args.resume, progress=args.progress)
    seconds = time.perf_counter() - start
    rows = example.summary(histories)
    results: dict[str, Any] = {
        "config": dataclasses.asdict(config),
        "runs": rows,
        "seconds": seconds,
    }
    text = json.dumps(results, indent=2) + "\n"
    atomic_write_text(folder / "results.json", text, what="the results")
    return rows, seconds
