"""Report types of ``stoax.audit``: the finding kinds (with their documentation), findings, reports.

Each finding kind has a docstring with a short before/after example; the documentation site pulls
them from :data:`KINDS`.
"""

from __future__ import annotations

import dataclasses
import textwrap

__all__ = [
    "AuditError",
    "AuditReport",
    "Finding",
    "KINDS",
    "Kind",
    "Location",
]


@dataclasses.dataclass(frozen=True)
class Location:
    """Where a finding is: the user's ``file:line`` and the function it is in."""

    file: str
    line: int
    function: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line} ({self.function})"


@dataclasses.dataclass(frozen=True)
class Kind:
    name: str
    severity: str  # "error" or "warning"
    title: str
    explanation: str
    fix: str
    doc: str = ""


CONSTANT_KEY = Kind(
    name="constant_key",
    severity="error",
    title="constant key",
    explanation=(
        "this random draw uses a key that depends on no input of the function: it is a "
        "compile-time constant (jax.random.key(0) / PRNGKey(0) made inside the traced function, or "
        "a key captured from the enclosing scope), so every call draws exactly the same numbers"
    ),
    fix=(
        "pass the key in as an argument and give every call a new one, e.g. "
        "stoax.step_key(seed, step) or jax.random.fold_in(key, step)"
    ),
    doc="""\
constant key -- the same randomness on every call.

The key of a draw depends on no input of the audited function: it is created inside it from a
literal seed, or closed over as a constant, so the compiled function repeats its "random" numbers
on every call (seed S0: Flax dropout with ``rngs={'dropout': jax.random.PRNGKey(0)}`` inside a
jitted step).

Before::

    @jax.jit
    def step(params, x):
        return model.apply(params, x, rngs={"dropout": jax.random.PRNGKey(0)})

After::

    @jax.jit
    def step(params, x, key):
        return model.apply(params, x, rngs={"dropout": key})

    step(params, x, stoax.step_key(seed, i))
""",
)

LOOP_INVARIANT_KEY = Kind(
    name="loop_invariant_key",
    severity="error",
    title="loop-invariant key",
    explanation=(
        "inside a scan / fori_loop / while_loop body this draw uses a key that depends neither on "
        "the loop carry (as it changes per iteration), the scanned inputs nor the iteration "
        "counter, so every iteration draws the same numbers"
    ),
    fix=(
        "derive the key from the iteration: jax.random.fold_in(key, i) with the step counter, "
        "scan over jax.random.split(key, n), or carry a key and split it in every step. If the "
        "same randomness on every iteration is intended (variational dropout), draw inside "
        "`with stoax.audit.shared():` to say so"
    ),
    doc="""\
loop-invariant key -- the same randomness on every iteration.

Inside ``lax.scan`` / ``fori_loop`` / ``while_loop`` a draw's key does not change from one
iteration to the next: it is closed over, carried through the loop unchanged, folded with a
value that never changes (``fold_in(key, i * 0)``), or scanned over copies of one key (seeds
S1/S2: an Equinox ``Dropout`` called with one key inside ``lax.scan``). Drawing the same mask on
every step on purpose (variational dropout in a recurrent loop) is declared with
``with stoax.audit.shared():`` around the draw, and is not reported.

Before::

    def body(x, _):
        return dropout(x, key=key), None          # key closed over: same mask every step
    x, _ = jax.lax.scan(body, x, None, length=10)

After::

    def body(x, i):
        return dropout(x, key=jax.random.fold_in(key, i)), None
    x, _ = jax.lax.scan(body, x, jnp.arange(10))
""",
)

REUSED_KEY = Kind(
    name="reused_key",
    severity="error",
    title="reused key",
    explanation=(
        "one key value is consumed by more than one random operation (two draws, or a draw and a "
        "split), so the two results are identical or correlated"
    ),
    fix=(
        "consume each key once: k1, k2 = jax.random.split(key) and give each use its own half, "
        "or derive children with jax.random.fold_in(key, <distinct constant>) / "
        "stoax.keys.derive(key, 'a', 'b')"
    ),
    doc="""\
reused key -- two draws that should be independent are the same.

A key is consumed twice: two dropout masks from one key (identical masks), ``normal(k)`` and
``split(k)`` on the same ``k``, two ``fold_in(k, c)`` with the same ``c`` (a constant or one
traced step) that both feed draws, ``ks[i]`` twice, an array holding one key twice (a broadcast
key, a repeating gather), or a key drawn from in one loop iteration and carried on to be split
again in the next. Keys equal by value count too: with JAX's default (partitionable) threefry,
``split(k, n)[i]`` *is* ``fold_in(k, i)``. ``fold_in`` of one key with *different* values is the
intended derivation and is not reuse; nor is the backward pass regenerating a forward mask
(``custom_vjp``, ``jax.checkpoint``), nor a draw whose result is never used.

Before::

    h = dropout(h1, key=key)
    g = dropout(h2, key=key)                     # same mask as above

After::

    k1, k2 = stoax.keys.derive(key, "drop1", "drop2")
    h = dropout(h1, key=k1)
    g = dropout(h2, key=k2)
""",
)

VMAP_SHARED_KEY = Kind(
    name="vmap_shared_key",
    severity="warning",
    title="randomness shared across a vmap axis",
    explanation=(
        "inside jax.vmap this draw uses a key that is not batched, and its result is combined "
        "with batched values: every batch element / ensemble member gets the same random numbers"
    ),
    fix=(
        "batch the key: jax.vmap(f)(xs, jax.random.split(key, n)), or fold the member index in. "
        "If sharing is intended, draw inside `with stoax.audit.shared():` to silence this"
    ),
    doc="""\
randomness shared across a vmap axis -- every member gets the same mask (a warning).

Under ``jax.vmap`` a draw whose key is not batched gives one result for the whole axis; combined
with batched values, every example or ensemble member sees the same randomness. Sharing a mask on
purpose is legitimate: draw it inside ``with stoax.audit.shared():`` (a ``jax.named_scope`` named
``stoax_shared_randomness``) to say so, and the audit stays silent.

Before::

    jax.vmap(lambda m, x: m(x, key=key))(ensemble, xs)          # one key for all members

After::

    keys = jax.random.split(key, n_members)
    jax.vmap(lambda m, x, k: m(x, key=k))(ensemble, xs, keys)
""",
)

KINDS: dict[str, Kind] = {
    k.name: k for k in (CONSTANT_KEY, LOOP_INVARIANT_KEY, REUSED_KEY, VMAP_SHARED_KEY)
}


@dataclasses.dataclass(frozen=True)
class Finding:
    """One randomness bug: ``kind`` (a key of :data:`KINDS`), ``severity``, a plain-language
    ``message``, the ``fix``, and the user's ``location`` (``None`` when unknown)."""

    kind: str
    severity: str
    message: str
    fix: str
    location: Location | None
    related: tuple[Location, ...] = ()

    @property
    def doc(self) -> str:
        return KINDS[self.kind].doc


class AuditError(AssertionError):
    """Raised by :meth:`AuditReport.raise_if_findings`."""


@dataclasses.dataclass
class AuditReport:
    """The result of ``stoax.audit``: ``findings`` (a list), ``ok`` when there are none."""

    function: str
    findings: list[Finding]
    num_draws: int = 0
    num_equations: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.findings

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    def of_kind(self, kind: str) -> list[Finding]:
        return [f for f in self.findings if f.kind == kind]

    def raise_if_findings(self) -> AuditReport:
        """Raise :class:`AuditError` (with the readable report) when there is a finding."""
        if self.findings:
            raise AuditError(str(self))
        return self

    def __str__(self) -> str:
        head = (
            f"stoax audit of {self.function}: {self.num_draws} random draw(s) in "
            f"{self.num_equations} equation(s), {self.seconds:.2f} s"
        )
        if not self.findings:
            return f"{head}\nno randomness problems found."
        rows = [("#", "severity", "kind", "location")]
        for i, f in enumerate(self.findings, 1):
            rows.append((str(i), f.severity, f.kind, str(f.location or "unknown location")))
        widths = [max(len(r[c]) for r in rows) for c in range(4)]
        line = "  ".join("-" * w for w in widths)
        out = [head, line]
        for j, r in enumerate(rows):
            out.append(
                "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=False)).rstrip()
            )
            if j == 0:
                out.append(line)
        out.append(line)
        n_err, n_warn = len(self.errors), len(self.warnings)
        out.append(f"{n_err} error(s), {n_warn} warning(s)")
        for i, f in enumerate(self.findings, 1):
            out.append("")
            out.append(f"[{i}] {KINDS[f.kind].title} ({f.severity}) at {f.location or 'unknown'}")
            out.extend(
                textwrap.wrap(f.message, 96, initial_indent="    ", subsequent_indent="    ")
            )
            for loc in f.related:
                out.append(f"    see also: {loc}")
            out.extend(
                textwrap.wrap(
                    "fix: " + f.fix, 96, initial_indent="    ", subsequent_indent="      "
                )
            )
        return "\n".join(out)

    __repr__ = __str__
