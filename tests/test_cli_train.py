"""``stoax train digits``: a short real run, resume, and every kind of bad input."""

import contextlib
import io
import json
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import time

import jax
import pytest

import stoax.cli
from stoax import train as st
from stoax.cli import train as cli_train
from stoax.examples import digits
from stoax.train import _files as files


def _main(*argv):
    """Run the CLI in-process; return (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = stoax.cli.main(["train", "digits", *argv])
        except SystemExit as exit_:  # argparse errors
            code = exit_.code
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "digits"
    with jax.debug_key_reuse(True):  # module-scoped: outside conftest's per-test setting
        code, stdout, stderr = _main("--epochs", "2", "--out", str(out), "--no-progress")
    return out, code, stdout, stderr


def test_short_run_writes_plot_checkpoints_and_table(short_run):
    out, code, stdout, stderr = short_run
    assert code == 0, stderr
    assert stderr == ""  # --no-progress: nothing on stderr
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for stem in ("dropout", "no_dropout"):
        meta = st.read_checkpoint_metadata(out / f"{stem}.safetensors")
        assert meta["step"] == 2 * (1437 // 64) and len(meta["history"]) == 2
    lines = stdout.splitlines()
    assert lines[0].split()[:4] == ["run", "epochs", "train", "acc"]
    assert lines[1].startswith("dropout 0.2") and lines[2].startswith("no dropout")
    results = json.loads((out / "results.json").read_text())
    assert [r["run"] for r in results["runs"]] == ["dropout 0.2", "no dropout"]
    assert all(r["test_accuracy"] > 80 for r in results["runs"])


def test_transformer_option_trains(tmp_path):
    # The --model transformer option is a working model, not a placeholder: with the fixed seed,
    # 8 epochs take both runs from chance (10%) to above 85% test accuracy.
    out = tmp_path / "digits"
    code, _, stderr = _main(
        "--model", "transformer", "--epochs", "8", "--out", str(out), "--no-progress"
    )
    assert code == 0, stderr
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["model"] == "transformer"
    assert all(r["test_accuracy"] > 85 for r in results["runs"]), results["runs"]


def test_existing_run_is_not_overwritten_silently(short_run):
    out = short_run[0]
    before = (out / "dropout.safetensors").read_bytes()
    code, _, stderr = _main("--epochs", "2", "--out", str(out))
    assert code == 2
    assert "already holds a run" in stderr and "--resume" in stderr and "--overwrite" in stderr
    assert (out / "dropout.safetensors").read_bytes() == before


def test_resume_of_a_finished_run_reports_the_same_table(short_run):
    out, _, stdout, _ = short_run
    code, again, stderr = _main("--epochs", "2", "--out", str(out), "--resume", "--no-progress")
    assert code == 0, stderr
    assert again.splitlines()[:3] == stdout.splitlines()[:3]


def test_resume_with_other_settings_is_refused(short_run):
    code, _, stderr = _main("--out", str(short_run[0]), "--resume", "--rate", "0.5")
    assert code == 1
    assert "other settings" in stderr and "rate=0.2 (now 0.5)" in stderr


def test_corrupt_checkpoint_is_refused(tmp_path):
    (tmp_path / "dropout.safetensors").write_bytes(b"\x00" * 10)
    code, _, stderr = _main("--out", str(tmp_path), "--resume", "--no-progress")
    assert code == 1 and "corrupt or truncated" in stderr


def test_missing_out_folder_is_created_but_not_its_parents(tmp_path):
    assert cli_train._make_folder(tmp_path / "new", make_parents=False)
    assert (tmp_path / "new").is_dir()
    code, _, stderr = _main("--out", str(tmp_path / "no" / "such" / "dir"))
    assert code == 2 and "its parent" in stderr and "does not exist" in stderr
    assert not (tmp_path / "no").exists()


def test_default_out_folder_is_created_with_its_parent(tmp_path, monkeypatch):
    # The README's main job runs `stoax train digits` in a fresh clone, where runs/ does not
    # exist yet: the default folder must be made, parent and all.
    monkeypatch.chdir(tmp_path)
    code, _, stderr = _main("--epochs", "1", "--no-progress")
    assert code == 0, stderr
    assert (tmp_path / cli_train.DEFAULT_OUT / "results.json").is_file()


def test_out_is_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    code, _, stderr = _main("--out", str(tmp_path / "f"))
    assert code == 2 and "is a file, not a folder" in stderr


def test_unwritable_out_folder(tmp_path, monkeypatch):
    if os.geteuid() == 0:  # root writes anywhere: simulate the refusal of the lock file

        def refuse(*args, **kwargs):
            raise PermissionError(13, "Permission denied")

        monkeypatch.setattr(files.FolderLock, "acquire", refuse)
    else:
        tmp_path.chmod(0o500)
    try:
        code, _, stderr = _main("--out", str(tmp_path))
    finally:
        tmp_path.chmod(0o700)
    assert code == 2 and "not writable" in stderr and "Permission denied" in stderr


def test_resume_without_a_run(tmp_path):
    code, _, stderr = _main("--out", str(tmp_path), "--resume")
    assert code == 2 and "nothing to resume" in stderr


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--bogus"], "unrecognized arguments: --bogus"),
        (["--rate", "1.5"], "the dropout rate is a probability in [0, 1)"),
        (["--epochs", "0"], "must be at least 1"),
        (["--model", "resnet"], "invalid choice: 'resnet'"),
        (["--resume", "--overwrite"], "not allowed with argument"),
    ],
)
def test_bad_options_exit_with_usage_errors(argv, message):
    code, _, stderr = _main(*argv)
    assert code == 2 and message in stderr and "usage: stoax train" in stderr


def test_help_reads_well():
    code, stdout, _ = _main("--help")
    assert code == 0
    for text in (
        "--seed",
        "--epochs",
        "--rate",
        "--model",
        "--out",
        "--resume",
        "--overwrite",
        "--no-progress",
        "examples:",
    ):
        assert text in stdout


# -- hardening: bad input, busy folders, full disks, --overwrite, --resume ----------------------


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _copy_run(short_run, tmp_path):
    out = tmp_path / "digits"
    shutil.copytree(short_run[0], out)
    return out


def _leftovers(out):
    """What is in ``out`` besides a run's four outputs, and what lies beside it."""
    inside = sorted(set(os.listdir(out)) - set(cli_train.OUTPUTS))
    beside = sorted(set(os.listdir(out.parent)) - {out.name})
    return inside, beside


def _assert_loadable(out, epochs=None):
    """Every checkpoint in ``out`` loads into a fresh template and agrees with its history."""
    config = digits.Config()
    for stem, _, rate in digits.runs(config):
        path = out / f"{stem}.safetensors"
        if path.exists():
            state, meta = st.load_checkpoint(path, config.init_state(rate))
            assert int(state.step) == meta["history"][-1]["step"]
            if epochs is not None:
                assert len(meta["history"]) == epochs


def _assert_results_agree(out):
    # results.json never contradicts itself, nor the checkpoints beside it.
    results = json.loads((out / "results.json").read_text())
    epochs = results["config"]["epochs"]
    assert [r["epochs"] for r in results["runs"]] == [epochs, epochs]
    _assert_loadable(out, epochs)
    return results


def test_version():
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_:
        stoax.cli.main(["--version"])
    assert exit_.value.code == 0 and out.getvalue() == f"stoax {stoax.__version__}\n"


@pytest.mark.parametrize(
    ("seed", "message"),
    [
        ("-1", "the seed must be in [0, 4294967295] (2**32 - 1), got -1"),
        ("4294967296", "the seed must be in [0, 4294967295] (2**32 - 1), got 4294967296"),
        ("1.5", "expected a whole number in [0, 4294967295], got '1.5'"),
    ],
)
def test_bad_seed_is_refused_before_anything_is_created(tmp_path, seed, message):
    # The probe: a scikit-learn traceback for -1, and an empty --out left behind.
    out = tmp_path / "digits"
    code, _, stderr = _main(f"--seed={seed}", "--out", str(out))
    assert code == 2 and message in stderr and "Traceback" not in stderr
    assert not out.exists()


def test_overwrite_with_a_bad_seed_leaves_the_old_run(short_run, tmp_path):
    out = _copy_run(short_run, tmp_path)
    before = _snapshot(out)
    code, _, stderr = _main("--overwrite", "--seed=2147483648000", "--out", str(out))
    assert code == 2 and "the seed must be in [0, 4294967295]" in stderr
    assert _snapshot(out) == before and _leftovers(out) == ([], [])


def _killed_lock_holder(folder):
    """A process that takes the folder's lock and is SIGKILLed holding it (the lock module is
    plain Python: loaded by path, no JAX import)."""
    script = (
        "import importlib.util, os, signal, sys\n"
        "spec = importlib.util.spec_from_file_location('files', sys.argv[1])\n"
        "files = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(files)\n"
        "files.FolderLock.acquire(sys.argv[2], command='stoax train digits')\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, files.__file__, str(folder)])
    assert proc.returncode == -signal.SIGKILL
    return json.loads((folder / files.LOCK_NAME).read_text())["pid"]


def test_lock_left_by_a_killed_run_blocks_nothing(tmp_path):
    # The lock is an flock: the kernel dropped it when its holder died, so its lock file (still
    # naming the dead process) is taken over. The run also uses a seed above int32 (the probe:
    # an OverflowError in the train step).
    out = tmp_path / "digits"
    out.mkdir()
    dead = _killed_lock_holder(out)
    with pytest.raises(ProcessLookupError):
        os.kill(dead, 0)
    code, _, stderr = _main(
        "--seed=2147483648", "--epochs", "1", "--out", str(out), "--no-progress"
    )
    assert code == 0, stderr
    assert json.loads((out / "results.json").read_text())["config"]["seed"] == 2**31
    assert _leftovers(out) == ([], [])  # the lock file went with the run


def test_second_run_into_a_busy_folder_is_refused(short_run):
    out = short_run[0]
    before = _snapshot(out)
    with files.FolderLock.acquire(out, command="stoax train digits --out x"):
        for extra in ([], ["--overwrite"], ["--resume"]):
            code, _, stderr = _main("--epochs", "3", "--out", str(out), *extra)
            assert code == 1
            assert f"{out} is in use by another run (process {os.getpid()}" in stderr
            assert "Wait for it to finish, or choose another --out" in stderr
        assert _snapshot(out) == {**before, files.LOCK_NAME: (out / files.LOCK_NAME).read_bytes()}
    assert _snapshot(out) == before


def test_resume_cannot_shorten_a_run(short_run):
    # The probe: --resume --epochs 1 on a longer run exited 0 and wrote a results.json saying
    # "epochs 1" in its config and "epochs 3" in its rows.
    out = short_run[0]
    before = _snapshot(out)
    code, _, stderr = _main("--epochs", "1", "--out", str(out), "--resume")
    assert code == 2
    assert "--epochs 1 is fewer than the 2 epochs" in stderr and "cannot be shortened" in stderr
    assert "Pass --epochs 2 to report it as it is" in stderr
    assert _snapshot(out) == before
    _assert_results_agree(out)


class _DiskFullAt:
    """``os.fsync`` that fails like a full disk (the kernel's own ENOSPC, from /dev/full) at the
    n-th regular file it is asked to flush."""

    def __init__(self, n):
        self.n, self.count, self.real = n, 0, os.fsync

    def __call__(self, fd):
        if stat.S_ISREG(os.fstat(fd).st_mode):
            self.count += 1
            if self.count == self.n:
                full = os.open("/dev/full", os.O_WRONLY)
                try:
                    os.write(full, b"x")
                finally:
                    os.close(full)
        return self.real(fd)


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_full_disk_during_a_run_keeps_the_earlier_checkpoint(tmp_path, monkeypatch):
    out = tmp_path / "digits"
    monkeypatch.setattr(os, "fsync", _DiskFullAt(2))  # the 2nd epoch's checkpoint
    code, _, stderr = _main("--epochs", "2", "--out", str(out), "--no-progress")
    monkeypatch.undo()
    assert code == 1 and "Traceback" not in stderr
    path = out / "dropout.safetensors"
    assert f"cannot write the checkpoint {path}: No space left on device" in stderr
    assert "was left as it was" in stderr
    _assert_loadable(out, epochs=1)  # the first epoch's checkpoint survives
    assert os.listdir(out) == ["dropout.safetensors"]  # no temporary file, no lock


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
@pytest.mark.parametrize("atomic_exchange", [True, False], ids=["exchange", "two-renames"])
def test_overwrite_replaces_the_run_only_once_the_new_one_is_done(
    short_run, tmp_path, monkeypatch, atomic_exchange
):
    # The probe: --overwrite deleted the old run first; a new run that then failed left nothing.
    out = _copy_run(short_run, tmp_path)
    before = _snapshot(out)
    monkeypatch.setattr(os, "fsync", _DiskFullAt(2))  # the new run fails on its 2nd write
    code, _, stderr = _main("--overwrite", "--epochs", "1", "--out", str(out), "--no-progress")
    monkeypatch.undo()
    assert code == 1 and "No space left on device" in stderr
    assert _snapshot(out) == before  # the old run, byte for byte
    assert _leftovers(out) == ([], [])  # and no half-made new run beside it

    if not atomic_exchange:  # where renameat2(RENAME_EXCHANGE) is missing: two renames
        monkeypatch.setattr(files, "exchange", lambda a, b: False)
    code, _, stderr = _main("--overwrite", "--epochs", "1", "--out", str(out), "--no-progress")
    assert code == 0, stderr
    assert _assert_results_agree(out)["config"]["epochs"] == 1
    assert _leftovers(out) == ([], [])


def test_overwrite_is_interrupted_cleanly(short_run, tmp_path, monkeypatch):
    out = _copy_run(short_run, tmp_path)
    before = _snapshot(out)

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(digits, "run_experiment", interrupt)
    code, _, stderr = _main("--overwrite", "--out", str(out))
    assert code == 130 and "interrupted" in stderr and "Traceback" not in stderr
    assert _snapshot(out) == before and _leftovers(out) == ([], [])


def test_overwrite_refuses_to_delete_files_stoax_did_not_write(short_run, tmp_path):
    out = _copy_run(short_run, tmp_path)
    (out / "notes.txt").write_text("mine")
    code, _, stderr = _main("--overwrite", "--out", str(out))
    assert code == 2 and "also holds files stoax did not write (notes.txt)" in stderr
    assert (out / "notes.txt").read_text() == "mine"


def test_swap_killed_between_its_two_renames_is_undone(short_run, tmp_path):
    # Without an atomic exchange the swap is two renames; killed between them, --out is missing
    # and the old run waits beside it. The next run puts it back.
    out = _copy_run(short_run, tmp_path)
    before = _snapshot(out)
    os.rename(out, tmp_path / ".digits.stoax-old-0123456789abcdef")
    code, _, stderr = _main("--epochs", "2", "--out", str(out), "--resume", "--no-progress")
    assert code == 0, stderr
    assert _snapshot(out)["dropout.safetensors"] == before["dropout.safetensors"]
    assert _leftovers(out) == ([], [])


# -- kill tests: real `stoax train digits` processes, SIGKILLed ---------------------------------

# Runs the command line in a fresh process that SIGKILLs itself just before its k-th flush of a
# file to disk (STOAX_TEST_KILL_AT=k): in the middle of writing a checkpoint, curves.png or
# results.json -- the moments where a kill can do harm.
_KILLABLE = """\
import os, signal, stat, sys
kill_at = int(os.environ.get("STOAX_TEST_KILL_AT", "0"))
real_fsync, count = os.fsync, [0]
def fsync(fd):
    if stat.S_ISREG(os.fstat(fd).st_mode):
        count[0] += 1
        if count[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
    return real_fsync(fd)
os.fsync = fsync
from stoax.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def spawn(tmp_path_factory):
    """Start ``stoax train digits ARGS`` in a new process; a module-wide JAX compilation cache
    makes every process after the first skip compiling."""
    cache = tmp_path_factory.mktemp("jax-cache")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [f"{root}/src", os.environ.get("PYTHONPATH")])),
        "JAX_COMPILATION_CACHE_DIR": str(cache),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    }

    def start(*argv, kill_at=0):
        return subprocess.Popen(
            [sys.executable, "-c", _KILLABLE, "train", "digits", "--no-progress", *argv],
            env={**env, "STOAX_TEST_KILL_AT": str(kill_at)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    return start


# (mode, writes it makes): a fresh 2-epoch run writes 2 runs x 2 checkpoints, the plot and the
# results; --resume to 3 epochs and --overwrite with 1 epoch write 2 checkpoints, plot, results.
_WRITES = {"fresh": 6, "resume": 4, "overwrite": 4}
_KILLS = [
    (seed, mode, random.Random(seed).randint(1, _WRITES[mode]))
    for seed, mode in enumerate(["overwrite", "resume", "fresh", "overwrite"])
]


@pytest.mark.slow
@pytest.mark.parametrize(("seed", "mode", "kill_at"), _KILLS, ids=[f"seed{s}" for s, *_ in _KILLS])
def test_sigkill_at_a_random_write_loses_nothing(short_run, tmp_path, spawn, seed, mode, kill_at):
    out = tmp_path / "digits"
    if mode != "fresh":
        shutil.copytree(short_run[0], out)
    before = _snapshot(out) if out.exists() else {}
    argv = {
        "fresh": ["--epochs", "2"],
        "resume": ["--epochs", "3", "--resume"],
        "overwrite": ["--epochs", "1", "--overwrite"],
    }[mode]
    proc = spawn("--out", str(out), *argv, kill_at=kill_at)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL, stderr.decode()

    # It died writing a file: that file's temporary copy is there, in --out or, for
    # --overwrite, in the new run's folder beside it.
    temps = [p for p in tmp_path.rglob("*") if files.TEMP_MARK in p.name]
    assert len(temps) == 1, temps

    # Right after the kill: the last good run is intact and loadable.
    if mode == "overwrite":
        assert {k: v for k, v in _snapshot(out).items() if k in before} == before
        _assert_results_agree(out)
    else:
        _assert_loadable(out)
        assert not (out / "results.json").exists()  # never one describing other weights

    # The next command in the folder finishes the job and clears what the kill left.
    epochs = {"fresh": "2", "resume": "3", "overwrite": "2"}[mode]
    resume = ["--resume"] if (out / "dropout.safetensors").exists() else []
    code, _, stderr = _main("--epochs", epochs, "--out", str(out), *resume, "--no-progress")
    assert code == 0, stderr
    results = _assert_results_agree(out)
    assert _leftovers(out) == ([], [])
    if mode == "fresh":  # killed and resumed == never stopped, to the last digit
        assert results["runs"] == json.loads((short_run[0] / "results.json").read_text())["runs"]


def test_sigkill_at_a_random_time_during_overwrite(short_run, tmp_path, spawn):
    # A kill at any moment -- before, during or after the swap -- leaves the old run or the
    # complete new one, never a mix, never nothing.
    out = _copy_run(short_run, tmp_path)
    before = _snapshot(out)
    proc = spawn("--out", str(out), "--epochs", "1", "--overwrite")
    time.sleep(random.Random(7).uniform(1.0, 6.0))
    proc.kill()
    proc.communicate(timeout=300)
    now = _snapshot(out)
    if now.get("results.json") == before["results.json"]:
        assert {k: v for k, v in now.items() if k in before} == before
    else:  # the new run made it in
        assert _assert_results_agree(out)["config"]["epochs"] == 1
    code, _, stderr = _main("--overwrite", "--epochs", "1", "--out", str(out), "--no-progress")
    assert code == 0, stderr
    assert _leftovers(out) == ([], [])


def test_concurrent_run_is_refused_then_killed(tmp_path, spawn):
    out = tmp_path / "digits"
    first = spawn("--out", str(out), "--epochs", "100")
    lock = out / files.LOCK_NAME
    deadline = time.monotonic() + 240
    while not (out / "dropout.safetensors").exists():  # wait until it has saved an epoch
        assert first.poll() is None and time.monotonic() < deadline, first.stderr.read()
        time.sleep(0.1)
    assert json.loads(lock.read_text())["pid"] == first.pid
    for extra in ([], ["--overwrite"]):
        code, _, stderr = _main("--epochs", "1", "--out", str(out), *extra)
        assert code == 1 and f"is in use by another run (process {first.pid}" in stderr
    first.kill()
    first.communicate(timeout=60)
    _assert_loadable(out)  # whatever epoch it reached
    code, _, stderr = _main("--overwrite", "--epochs", "1", "--out", str(out), "--no-progress")
    assert code == 0, stderr  # its stale lock is taken over
    _assert_results_agree(out)
    assert _leftovers(out) == ([], [])


def test_overwrite_through_a_symlink_keeps_the_symlink(short_run, tmp_path):
    real = _copy_run(short_run, tmp_path)
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    code, _, stderr = _main("--overwrite", "--epochs", "1", "--out", str(link), "--no-progress")
    assert code == 0, stderr
    assert link.is_symlink() and link.resolve() == real.resolve()
    assert _assert_results_agree(real)["config"]["epochs"] == 1
    assert sorted(os.listdir(tmp_path)) == ["digits", "link"]
