"""The Transformer table of ``run.py`` for two versions of stoax, side by side, in one command.

    python benchmarks/before_after.py [--before REV] [--configs all|main] [--timing] [--reps N]

``--before`` (default ``2e34ce9``, the last commit before the scanned-stack work) is exported
with ``git archive`` into a temporary folder; the current checkout is "after". For every
configuration (PRNG impl x dtype x model size) ``run.py --memory-only`` runs once per version in
a fresh process (``PYTHONPATH`` pointing at that version's ``src``; the benchmark code is this
checkout's for both), and the table shows XLA's temporary memory of the training step with
dropout on and off (exact, from ``compiled.memory_analysis()``) and the compile time.
``--timing`` adds one timed run of the main configuration per impl (interleaved rounds, both
versions' rows in one process is impossible -- they are separate processes, so quote the ratios
to the anchors measured in the same process, not the raw milliseconds across versions).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / "benchmarks" / "run.py"

MAIN = ["--layers", "4", "--d-model", "256", "--seq", "128", "--batch", "32"]
LARGE = ["--layers", "12", "--d-model", "512", "--seq", "256", "--batch", "32"]
BEFORE_ROWS = "stoax,stoax unrolled"
AFTER_ROWS = "stoax,stoax remat=False,stoax unrolled,flax nnx,equinox"


def export(rev: str, into: Path) -> Path:
    """``src`` of ``rev`` under ``into`` (``git archive``: no checkout is touched)."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", rev, "src"],
        check=True,
        capture_output=True,
    ).stdout
    tar_path = into / "src.tar"
    tar_path.write_bytes(archive)
    with tarfile.open(tar_path) as tar:
        tar.extractall(into, filter="data")
    return into / "src"


def run(src: Path, args: list[str], out: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(src))
    cmd = [sys.executable, str(RUN), *args, "--json", str(out)]
    print("$", " ".join(cmd), f"(PYTHONPATH={src})", file=sys.stderr, flush=True)
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"run.py failed:\n{done.stdout}\n{done.stderr}")
    print(done.stdout, file=sys.stderr, flush=True)
    return json.loads(out.read_text())


def mib(row: dict, rate: str) -> float:
    return row[rate]["temp_bytes"] / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", default="2e34ce9")
    parser.add_argument("--configs", default="all", choices=["all", "main"])
    parser.add_argument("--timing", action="store_true")
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()

    sizes = {"4x256": MAIN} if args.configs == "main" else {"4x256": MAIN, "12x512": LARGE}
    configs = [
        (impl, dtype, size)
        for impl in ("threefry2x32", "rbg")
        for dtype in ("float32", "bfloat16")
        for size in sizes
    ]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        before_src = export(args.before, tmp)
        after_src = ROOT / "src"
        print(
            f"\nTemporary memory of the training step (MiB, XLA memory_analysis), "
            f"before = {args.before}, after = this checkout"
        )
        header = (
            f"{'impl':13s} {'dtype':9s} {'model':7s} {'row':20s} "
            f"{'before on':>10s} {'off':>7s} {'on/off':>7s} {'after on':>9s} {'off':>7s} "
            f"{'on/off':>7s} {'/unrolled':>9s} {'compile s':>9s}"
        )
        lines = [header]
        for impl, dtype, size in configs:
            common = ["--memory-only", "--impl", impl, "--dtype", dtype, *sizes[size]]
            old = run(before_src, [*common, "--rows", BEFORE_ROWS], tmp / "before.json")
            new = run(after_src, [*common, "--rows", AFTER_ROWS], tmp / "after.json")
            unrolled = mib(new["rows"]["stoax unrolled"], "on")
            for name, row in new["rows"].items():
                was = old["rows"].get(name)
                before = (
                    f"{mib(was, 'on'):10.1f} {mib(was, 'off'):7.1f} "
                    f"{mib(was, 'on') / mib(was, 'off'):7.3f}"
                    if was
                    else f"{'':10s} {'':7s} {'':7s}"
                )
                lines.append(
                    f"{impl:13s} {dtype:9s} {size:7s} {name:20s} {before} "
                    f"{mib(row, 'on'):9.1f} {mib(row, 'off'):7.1f} "
                    f"{mib(row, 'on') / mib(row, 'off'):7.3f} {mib(row, 'on') / unrolled:9.3f} "
                    f"{row['on']['compile_s']:9.1f}"
                )
            print("\n".join(lines[-len(new["rows"]) :]), flush=True)
        print("\n" + "\n".join(lines))
        if args.timing:
            for impl in ("threefry2x32", "rbg"):
                for label, src in (("before", before_src), ("after", after_src)):
                    rows = BEFORE_ROWS + ",flax nnx,equinox" if label == "before" else AFTER_ROWS
                    common = ["--skip-elementwise", "--impl", impl, "--reps", str(args.reps)]
                    result = run(src, [*common, *MAIN, "--rows", rows], tmp / "timing.json")
                    fastest = min(result["rows"][n]["on"]["ms"] for n in ("flax nnx", "equinox"))
                    for name, row in result["rows"].items():
                        print(
                            f"{label:6s} {impl:13s} {name:20s} on {row['on']['ms']:8.1f} ms  "
                            f"off {row['off']['ms']:8.1f} ms  on / fastest anchor "
                            f"{row['on']['ms'] / fastest:5.2f}",
                            flush=True,
                        )


if __name__ == "__main__":
    main()
