"""Multi-process runs on JAX's own multi-controller runtime, and a local launcher for them.

JAX scales past one host with one Python process per host, joined by
``jax.distributed.initialize``: every process runs the same program, sees every device of the job
(``jax.devices()``) but holds data only on its own (``jax.local_devices()``), and a
``jax.sharding.Mesh`` over all devices is one *global* mesh. stoax runs on that runtime as is --
it adds no engine of its own. This module holds the three small pieces around it:

* :func:`initialize` joins the job. It reads the coordinator address, the number of processes
  and this process's id from its arguments or from the ``STOAX_COORDINATOR_ADDRESS``,
  ``STOAX_NUM_PROCESSES``, ``STOAX_PROCESS_ID`` variables (set by :func:`launch`); with neither
  it is a no-op, so the same script runs on one process. On CPU it selects JAX's gloo
  collectives; with a loopback coordinator address (``127.0.0.1:PORT``) the coordinator and the
  collectives listen on loopback only.
* :func:`launch` starts ``N`` local processes of one command, each with its own simulated CPU
  devices, on a free loopback port; bounds their time (the whole process group of each is killed
  on timeout or when a peer fails) and returns what each printed. For tests and examples on one
  machine -- on a cluster the scheduler starts the processes (see the multi-host docs page).
* :func:`shard_batch` turns the global batch, which every process derives from ``(seed,
  epoch)``, into one global ``jax.Array``: each process feeds only the rows its own devices hold.

Command line: ``python -m stoax.distributed -n 2 -d 4 -- python examples/sharded_transformer.py``
runs the example on 2 processes of 4 simulated CPU devices each.

Example:
    >>> import stoax
    >>> stoax.distributed.initialize()  # no coordinator configured: one process, a no-op
    0
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import ipaddress
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import jax
import numpy as np

__all__ = [
    "ENV_COORDINATOR",
    "ENV_NUM_PROCESSES",
    "ENV_PROCESS_ID",
    "LaunchError",
    "ProcessResult",
    "free_port",
    "initialize",
    "launch",
    "shard_batch",
]

T = TypeVar("T")

ENV_COORDINATOR = "STOAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "STOAX_NUM_PROCESSES"
ENV_PROCESS_ID = "STOAX_PROCESS_ID"


def _is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    timeout: int = 120,
) -> int:
    """Join a multi-process JAX job; return this process's index (``jax.process_index()``).

    Arguments left ``None`` are read from ``STOAX_COORDINATOR_ADDRESS``, ``STOAX_NUM_PROCESSES``
    and ``STOAX_PROCESS_ID``. With no coordinator address at all, this is a single-process run:
    nothing is done and ``0`` is returned, so one script serves 1 process and N. (On a cluster
    whose scheduler JAX detects by itself -- SLURM, Open MPI -- call
    ``jax.distributed.initialize()`` instead, or pass its values here.) Call it first, before
    any JAX computation; a second call in a process already joined returns its index.

    On CPU, JAX's gloo collectives are selected (``jax_cpu_collectives_implementation``): without
    them a CPU step over devices of several processes cannot run. A loopback coordinator address
    binds the coordinator to loopback (JAX's default is every interface) and the gloo collectives
    to ``127.0.0.1``, so a local job contacts nothing but loopback. ``timeout`` bounds, in seconds,
    the wait for every process to join.

    Example:
        >>> import stoax
        >>> stoax.distributed.initialize()  # nothing configured: one process
        0
    """
    address = coordinator_address or os.environ.get(ENV_COORDINATOR) or None
    if address is None:
        if num_processes not in (None, 1) or process_id not in (None, 0):
            raise ValueError(
                "stoax.distributed.initialize: num_processes/process_id given without a "
                "coordinator_address (host:port of process 0). Pass it, or set "
                f"{ENV_COORDINATOR}."
            )
        return 0
    from jax._src import distributed as jax_distributed

    if jax_distributed.global_state.client is not None:  # already joined
        return jax.process_index()
    num_processes = _int_setting(num_processes, ENV_NUM_PROCESSES, "num_processes")
    process_id = _int_setting(process_id, ENV_PROCESS_ID, "process_id")
    if not 0 <= process_id < num_processes:
        raise ValueError(
            f"stoax.distributed.initialize: process_id={process_id} is not in [0, "
            f"{num_processes}) (num_processes={num_processes})."
        )
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(
            f"stoax.distributed.initialize: coordinator_address must be 'host:port', got "
            f"{address!r}."
        )
    try:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    except (AttributeError, ValueError) as err:  # pragma: no cover - depends on the JAX build
        raise RuntimeError(
            "stoax.distributed.initialize: this JAX build has no CPU collectives (gloo); "
            f"multi-process runs on CPU are impossible with it ({err})."
        ) from err
    loopback = _is_loopback(host)
    jax.distributed.initialize(
        coordinator_address=address,
        num_processes=num_processes,
        process_id=process_id,
        initialization_timeout=timeout,
        coordinator_bind_address=f"{host}:{port}" if loopback else None,
    )
    if loopback:
        _pin_gloo_to_loopback()
    return jax.process_index()


def _int_setting(value: int | None, env: str, name: str) -> int:
    if value is None:
        raw = os.environ.get(env)
        if raw is None or not raw.strip().lstrip("-").isdigit():
            raise ValueError(
                f"stoax.distributed.initialize: a coordinator address is set but {name} is not: "
                f"pass {name}=, or set {env} (got {raw!r})."
            )
        value = int(raw)
    return int(value)


def _pin_gloo_to_loopback() -> None:
    """Make JAX's CPU client use gloo over 127.0.0.1 (by default gloo listens on the address the
    host name resolves to). JAX has no public setting for it; if its internals moved, keep JAX's
    default (which is loopback wherever the host name resolves to 127.0.0.1)."""
    try:
        from jax._src import distributed as jax_distributed
        from jax._src import xla_bridge
        from jax._src.lib import _jax

        if xla_bridge.backends_are_initialized():
            return
        collectives = _jax.make_gloo_tcp_collectives(
            distributed_client=jax_distributed.global_state.client, hostname="127.0.0.1"
        )
        xla_bridge.register_backend_factory(
            "cpu", functools.partial(xla_bridge.make_cpu_client, collectives=collectives)
        )
    except (ImportError, AttributeError, TypeError):  # pragma: no cover - JAX internals moved
        pass


def shard_batch(batch: T, sharding: jax.sharding.Sharding) -> T:
    """Place a global batch (a pytree of host arrays, the same on every process) as global
    ``jax.Array`` s with ``sharding``; each process transfers only the rows of its own devices.

    With one process this is ``jax.device_put``. With several, every process derives the same
    global batch from ``(seed, epoch)`` (:func:`stoax.train.batches`), so the global array is the
    one a single process would build, and the step computes the same thing. ``sharding``
    usually splits the leading (example) axis: ``NamedSharding(mesh, P("data"))``.

    Example:
        >>> import jax, numpy as np, stoax
        >>> from jax.sharding import NamedSharding, PartitionSpec as P
        >>> mesh = jax.make_mesh((1,), ("data",))
        >>> x = stoax.distributed.shard_batch(np.arange(4.0), NamedSharding(mesh, P("data")))
        >>> x.shape, x.sharding.spec == P("data")
        ((4,), True)
    """

    def place(x: Any) -> jax.Array:
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    return jax.tree.map(place, batch)


# -- the local launcher --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ProcessResult:
    """What one launched process did: its id, exit status and output."""

    process_id: int
    returncode: int | None  # None: killed by the launcher (timeout, or a failed peer)
    stdout: str
    stderr: str


class LaunchError(RuntimeError):
    """A launched job failed or ran past its time; ``results`` holds every process's output."""

    def __init__(self, message: str, results: list[ProcessResult]):
        super().__init__(message)
        self.results = results


def free_port() -> int:
    """A TCP port free on loopback right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(
    command: Sequence[str],
    *,
    num_processes: int,
    devices_per_process: int = 1,
    timeout: float = 300.0,
    env: Mapping[str, str] | None = None,
    check: bool = True,
    grace: float = 10.0,
) -> list[ProcessResult]:
    """Run ``command`` as ``num_processes`` local processes joined into one JAX job.

    Each process gets ``STOAX_COORDINATOR_ADDRESS=127.0.0.1:PORT`` (a free loopback port),
    ``STOAX_NUM_PROCESSES``, ``STOAX_PROCESS_ID``, ``JAX_PLATFORMS=cpu`` and
    ``XLA_FLAGS=--xla_force_host_platform_device_count=devices_per_process``; the command calls
    :func:`initialize` to join. Each process runs in its own process group. The job is bounded:
    after ``timeout`` seconds every group still running is killed (SIGKILL), and when one process
    fails the others get ``grace`` seconds (they may be blocked in a collective) before theirs
    are. Nothing is left running when this returns. Results come in process order; with
    ``check`` (the default) a failure or timeout raises :class:`LaunchError` quoting the ends of
    the failed processes' stderr.

    Example:
        >>> import sys, stoax
        >>> code = "import stoax, jax; print(stoax.distributed.initialize(), jax.process_count())"
        >>> results = stoax.distributed.launch([sys.executable, "-c", code], num_processes=2,
        ...                                    timeout=120)  # doctest: +SKIP
        >>> [r.stdout.split() for r in results]  # doctest: +SKIP
        [['0', '2'], ['1', '2']]
    """
    if num_processes < 1 or devices_per_process < 1:
        raise ValueError(
            f"stoax.distributed.launch: num_processes ({num_processes}) and devices_per_process "
            f"({devices_per_process}) must be >= 1."
        )
    address = f"127.0.0.1:{free_port()}"
    base = {**os.environ, **(env or {})}
    flags = [f for f in base.get("XLA_FLAGS", "").split() if "host_platform_device_count" not in f]
    flags.append(f"--xla_force_host_platform_device_count={devices_per_process}")
    base.update(
        {
            "XLA_FLAGS": " ".join(flags),
            "JAX_PLATFORMS": "cpu",
            ENV_COORDINATOR: address,
            ENV_NUM_PROCESSES: str(num_processes),
        }
    )
    with tempfile.TemporaryDirectory(prefix="stoax-launch-") as logs:
        procs, files = [], []
        try:
            for pid in range(num_processes):
                out = open(os.path.join(logs, f"{pid}.out"), "w+")  # noqa: SIM115
                err = open(os.path.join(logs, f"{pid}.err"), "w+")  # noqa: SIM115
                files.append((out, err))
                procs.append(
                    subprocess.Popen(
                        list(command),
                        stdout=out,
                        stderr=err,
                        stdin=subprocess.DEVNULL,
                        env={**base, ENV_PROCESS_ID: str(pid)},
                        start_new_session=True,  # its own process group, killed as a whole
                    )
                )
            killed, timed_out = _wait(procs, timeout=timeout, grace=grace)
        finally:
            for proc in procs:
                _kill_group(proc)
        results = []
        for pid, (proc, (out, err)) in enumerate(zip(procs, files, strict=True)):
            out.seek(0)
            err.seek(0)
            code = None if pid in killed else proc.returncode
            results.append(ProcessResult(pid, code, out.read(), err.read()))
            out.close()
            err.close()
    failed = [r for r in results if r.returncode != 0]
    if check and failed:
        why = f"ran past its timeout of {timeout:g} s" if timed_out else "failed"
        tails = "\n".join(
            f"--- process {r.process_id} (exit status {r.returncode}, None = killed):\n"
            f"{r.stderr[-3000:]}"
            for r in failed
        )
        raise LaunchError(
            f"stoax.distributed.launch: the {num_processes}-process job {why}.\n{tails}", results
        )
    return results


def _wait(
    procs: list[subprocess.Popen[bytes]], *, timeout: float, grace: float
) -> tuple[set[int], bool]:
    """Wait for ``procs``; kill all on timeout, the rest ``grace`` s after a failure. Returns
    the ids killed and whether the timeout struck."""
    deadline = time.monotonic() + timeout
    killed: set[int] = set()
    while True:
        codes = [p.poll() for p in procs]
        if all(c is not None for c in codes):
            return killed, False
        now = time.monotonic()
        if any(c not in (None, 0) for c in codes):
            deadline = min(deadline, now + grace)
        if now >= deadline:
            for pid, proc in enumerate(procs):
                if proc.poll() is None:
                    _kill_group(proc)
                    proc.wait()
                    killed.add(pid)
            return killed, not any(c not in (None, 0) for c in codes)
        time.sleep(0.05)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process group of ``proc`` (it leads its own session), children included."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def _main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m stoax.distributed",
        description="Run a command as N local JAX processes (loopback only) and print their "
        "output.",
    )
    parser.add_argument("-n", "--num-processes", type=int, default=2)
    parser.add_argument("-d", "--devices-per-process", type=int, default=1)
    parser.add_argument("-t", "--timeout", type=float, default=600.0)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given")
    results = launch(
        command,
        num_processes=args.num_processes,
        devices_per_process=args.devices_per_process,
        timeout=args.timeout,
        check=False,
    )
    for r in results:
        for line in r.stdout.splitlines():
            print(f"[{r.process_id}] {line}")
        if r.returncode != 0:
            print(
                f"[{r.process_id}] exit status {r.returncode}:\n{r.stderr[-3000:]}", file=sys.stderr
            )
    return 0 if all(r.returncode == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(_main())
