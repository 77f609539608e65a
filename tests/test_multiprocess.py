"""Multi-process runs on JAX's own runtime: 1 process x 8 CPU devices against 2 x 4 (and 4 x 2)
processes joined by ``jax.distributed`` over loopback with gloo collectives.

Every job runs ``tests/multiprocess_cases/transformer_job.py`` (a tiny Transformer with dropout)
and is shared by several tests, because starting processes is the expensive part:

* ``single``: 1 process, 8 devices -- the reference: equivalence, an uninterrupted training run,
  and half a run checkpointed with orbax.
* ``two``: 2 processes x 4 devices -- equivalence; resumes the 1-process checkpoint and finishes
  the run; saves half a run of its own.
* ``single_again``: 1 process -- resumes the 2-process checkpoint; saves, then is SIGKILLed in
  the middle of an asynchronous save; ``after_kill`` restores that folder.
* ``four``: 4 processes x 2 devices -- equivalence (marked slow).

Every job is bounded (stoax.distributed.launch kills the process groups at the timeout).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import stoax

CASE = Path(__file__).parent / "multiprocess_cases" / "transformer_job.py"
TIMEOUT = 900  # seconds per job: a bound, far above the ~1 min a job takes on 2 idle cores


def _gloo_missing() -> str | None:
    import jax

    if os.name != "posix":
        return "the launcher kills process groups (POSIX only)"
    if not hasattr(jax.config, "jax_cpu_collectives_implementation"):
        return "this JAX build has no jax_cpu_collectives_implementation (no CPU collectives)"
    return None


pytestmark = pytest.mark.skipif(_gloo_missing() is not None, reason=str(_gloo_missing()))


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOAX_COORDINATOR")}
    env.pop("XLA_FLAGS", None)
    src = str(Path(__file__).parents[1] / "src")
    env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _parse(stdout: str) -> dict:
    out: dict = {}
    for line in stdout.splitlines():
        if line.startswith("{"):
            out.update(json.loads(line))
    return out


def run_single(workdir: Path, *phases: str, check: bool = True) -> dict:
    env = {
        **_env(),
        "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
        "JAX_PLATFORMS": "cpu",
    }
    proc = subprocess.run(
        [sys.executable, str(CASE), str(workdir), *phases],
        capture_output=True,
        text=True,
        env=env,
        timeout=TIMEOUT,
    )
    if check:
        assert proc.returncode == 0, proc.stderr[-4000:]
    return {**_parse(proc.stdout), "returncode": proc.returncode}


def run_many(workdir: Path, processes: int, *phases: str) -> list[dict]:
    results = stoax.distributed.launch(
        [sys.executable, str(CASE), str(workdir), *phases],
        num_processes=processes,
        devices_per_process=8 // processes,
        timeout=TIMEOUT,
        env=_env(),
    )
    return [_parse(r.stdout) for r in results]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, request) -> Path:
    """One folder per test session. Under pytest-xdist the workers share it (the session's base
    temporary folder), and each job runs once: see ``_once``."""
    if not hasattr(request.config, "workerinput"):
        return tmp_path_factory.mktemp("multiprocess")
    shared = tmp_path_factory.getbasetemp().parent / "multiprocess"
    shared.mkdir(exist_ok=True)
    return shared


def _once(workdir: Path, name: str, compute):
    """``compute()``'s result, computed by the first worker that asks and read by the others
    (they wait on a lock): a job is too expensive to run once per xdist worker."""
    import fcntl

    result_file = workdir / f"{name}.json"
    with open(workdir / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if result_file.exists():
            return json.loads(result_file.read_text())
        result = compute()
        result_file.write_text(json.dumps(result))
        return result


@pytest.fixture(scope="module")
def single(workdir) -> dict:
    return _once(
        workdir, "single", lambda: run_single(workdir, "equivalence", "reference", "save-half")
    )


@pytest.fixture(scope="module")
def two(workdir, single) -> list[dict]:
    return _once(
        workdir,
        "two",
        lambda: run_many(workdir, 2, "equivalence", "resume-from-other", "save-half", "sockets"),
    )


@pytest.fixture(scope="module")
def single_again(workdir, two) -> dict:
    return _once(
        workdir,
        "single_again",
        lambda: run_single(workdir, "resume-from-other", "kill-mid-save", check=False),
    )


def test_processes_form_one_global_mesh(single, two):
    assert (single["processes"], single["devices"]) == (1, 8)
    assert [(r["processes"], r["devices"]) for r in two] == [(2, 8), (2, 8)]


def test_the_job_contacts_nothing_but_loopback(two):
    # every TCP socket of both processes (coordinator service, its clients, gloo's pairs) is
    # bound and connected on loopback; sockets were really found (the check is not blind)
    for run in two:
        assert run["sockets"]["tcp_sockets"] >= 2, run["sockets"]
        assert run["sockets"]["not_loopback"] == [], run["sockets"]


def _assert_equivalent(reference: dict, runs: list[dict]) -> None:
    for mesh in ("data", "dxm"):
        ref = reference["equivalence"][mesh]
        assert 0.4 < ref["keep_fraction"] < 0.6  # a real rate-0.5 mask
        for run in runs:  # every process reports the same global values
            got = run["equivalence"][mesh]
            # masks, per-example losses and per-example gradients, bit for bit
            for what in ("mask", "losses", "grads"):
                assert got[what] == ref[what], (mesh, what, got, ref)
    # the mask does not depend on the mesh either
    assert reference["equivalence"]["data"]["mask"] == reference["equivalence"]["dxm"]["mask"]


def test_masks_losses_and_gradients_are_bitwise_the_same_on_1_and_2_processes(single, two):
    _assert_equivalent(single, two)


def test_random_numbers_add_no_collectives_multi_process_too(single, two):
    for run in (single, *two):
        counts = run["equivalence"]["dxm"]["collectives"]
        assert counts["on"] == counts["off"], counts
    # the collectives are real (the gradient sum over "data", tensor parallelism over "model"),
    # and the program is the one a single process compiles
    counts = two[0]["equivalence"]["dxm"]["collectives"]
    assert counts["on"]["all-reduce"] >= 2, counts
    assert counts == single["equivalence"]["dxm"]["collectives"]


def test_run_saved_on_1_process_resumes_on_2_bitwise(single, two):
    assert single["save-half"] == {"steps": [2], "format": "orbax"}
    for run in two:
        resumed = run["resume-from-other"]
        assert resumed["restored_step"] == 2 and resumed["meta_epoch"] == 1
        assert resumed["meta_has_eval"]  # fit's record, evaluation included, as metadata
        assert resumed["format"] == "orbax"  # detected from the folder
        assert resumed["final"] == single["reference"]["final"]


def test_run_saved_on_2_processes_resumes_on_1_bitwise(single, two, single_again):
    assert all(r["save-half"] == {"steps": [2], "format": "orbax"} for r in two)
    resumed = single_again["resume-from-other"]
    assert resumed["restored_step"] == 2 and resumed["format"] == "orbax"
    # the 2-process checkpoint also restores onto one device and onto a (4, 2) tensor-parallel
    # mesh (weights really split there), with the same values
    assert resumed["same_on_other_meshes"] == [True, True] and resumed["tp_sharded_leaves"] > 0
    assert resumed["final"] == single["reference"]["final"]


def test_a_process_killed_mid_save_leaves_the_previous_checkpoint(workdir, single_again):
    assert single_again["returncode"] == -9  # SIGKILL, as planned
    assert single_again["saving_when_killed"]  # it died while the save was being written
    after = _once(workdir, "after_kill", lambda: run_single(workdir, "after-kill"))["after-kill"]
    assert after["steps"] == [1], after  # the cut-short step 2 is not a checkpoint
    # whatever the kill left of step 2 (orbax's unfinished folder, if it got that far) is not
    # taken for a checkpoint, and nothing else is there
    assert all(name == "1" or name.startswith("2.") for name in after["left"]), after
    assert after["restored_equal"] and after["key_impl"] == "rbg", after  # typed key, its impl


@pytest.mark.slow
def test_masks_losses_and_gradients_are_bitwise_the_same_on_4_processes(workdir, single):
    four = _once(workdir, "four", lambda: run_many(workdir, 4, "equivalence"))
    assert [(r["processes"], r["devices"]) for r in four] == [(4, 8)] * 4
    _assert_equivalent(single, four)
    for run in four:
        counts = run["equivalence"]["dxm"]["collectives"]
        assert counts["on"] == counts["off"], counts


# -- the launcher itself (no JAX in the children: cheap) ------------------------------------------


def test_launch_gives_each_process_its_id_and_a_loopback_coordinator():
    code = (
        "import os; print(os.environ['STOAX_PROCESS_ID'], os.environ['STOAX_NUM_PROCESSES'], "
        "os.environ['STOAX_COORDINATOR_ADDRESS'], os.environ['XLA_FLAGS'])"
    )
    results = stoax.distributed.launch(
        [sys.executable, "-c", code], num_processes=3, devices_per_process=2, timeout=60
    )
    rows = [r.stdout.split() for r in results]
    assert [row[:2] for row in rows] == [["0", "3"], ["1", "3"], ["2", "3"]]
    assert len({row[2] for row in rows}) == 1 and rows[0][2].startswith("127.0.0.1:")
    assert rows[0][3] == "--xla_force_host_platform_device_count=2"


def test_launch_kills_the_whole_process_group_on_timeout(tmp_path):
    # the child starts a grandchild that would write a file after 2 s; the launcher's timeout
    # (1 s) kills both, so the file never appears
    marker = tmp_path / "late"
    grandchild = tmp_path / "grandchild.py"
    grandchild.write_text(f"import time\ntime.sleep(2)\nopen({str(marker)!r}, 'w').close()\n")
    code = (
        "import subprocess, sys, time; "
        f"subprocess.Popen([sys.executable, {str(grandchild)!r}]); time.sleep(60)"
    )
    with pytest.raises(stoax.distributed.LaunchError, match="ran past its timeout") as err:
        stoax.distributed.launch([sys.executable, "-c", code], num_processes=2, timeout=1)
    assert [r.returncode for r in err.value.results] == [None, None]  # both killed
    import time

    time.sleep(3)
    assert not marker.exists()


def test_launch_stops_the_peers_of_a_failed_process():
    code = (
        "import os, sys, time\n"
        "if os.environ['STOAX_PROCESS_ID'] == '1': sys.exit('process 1 failed on purpose')\n"
        "time.sleep(60)"
    )
    with pytest.raises(stoax.distributed.LaunchError, match="failed on purpose") as err:
        stoax.distributed.launch(
            [sys.executable, "-c", code], num_processes=2, timeout=60, grace=0.5
        )
    assert [r.returncode for r in err.value.results] == [None, 1]  # peer killed after the grace
