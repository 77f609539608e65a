"""One signature rule for every public layer, checked on every layer found in stoax's public
namespaces -- a new layer is checked without being listed here.

The rule (issue 19):

* Constructor (``__init__``): hyper-parameters are positional-or-keyword; ``training``, ``key``,
  ``dtype`` and initialisers (``*_init``) are keyword-only.
* Call (``__call__``): the inputs are positional and required; ``key`` and every other call
  option (``mask``, ``initial_carry``, ``seq_lengths``, ``return_carry``, ...) are keyword-only.
  An optional positional parameter is an option in disguise, so it is refused unless it is a
  true input listed in ``OPTIONAL_INPUTS`` (attention's ``context``: the sequence attended to,
  the query itself when omitted, as in ``attn(x)`` vs ``attn(x, memory)``).
* Exempt: the drop-in ``Dropout`` classes of ``stoax.interop``. A drop-in must keep its peer's
  signature (``flax.linen.Dropout(rate, broadcast_dims, deterministic, ...)`` takes
  ``deterministic`` positionally), so they are checked against their peer instead: same
  parameter names, kinds, order and defaults.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import stoax

KEYWORD_ONLY_NAMES = {"training", "key", "dtype"}

# (class name, parameter): optional positional inputs of __call__ that are true inputs.
OPTIONAL_INPUTS = {("MultiHeadAttention", "context")}

# stoax.interop submodule -> the peer module whose class of the same name it replaces.
PEERS = {
    "stoax.interop.linen": "flax.linen",
    "stoax.interop.nnx": "flax.nnx",
    "stoax.interop.equinox": "equinox.nn",
}


def _public_modules() -> list:
    """stoax and every public submodule (no ``_`` in the dotted name). A module that needs an
    optional library that is not installed (flax, equinox, the ``train`` extra) is skipped."""
    found = [stoax]
    for info in pkgutil.walk_packages(stoax.__path__, "stoax."):
        if any(part.startswith("_") for part in info.name.split(".")):
            continue
        try:
            found.append(importlib.import_module(info.name))
        except ModuleNotFoundError as error:
            if (error.name or "stoax").split(".")[0] == "stoax":
                raise  # stoax itself is broken: that is a failure, not a missing extra
            print(f"skipped {info.name}: {error}")
    return found


def _public_classes(module) -> list[type]:
    names = getattr(module, "__all__", None)
    if names is None:
        names = [n for n in vars(module) if not n.startswith("_")]
    return [
        obj
        for name in names
        if inspect.isclass(obj := getattr(module, name, None)) and not name.startswith("_")
    ]


MODULES = _public_modules()


def _layers() -> list[type]:
    """Every public stoax.Module subclass, once, sorted by qualified name."""
    seen: dict[str, type] = {}
    for module in MODULES:
        for cls in _public_classes(module):
            if issubclass(cls, stoax.Module) and cls is not stoax.Module:
                seen[f"{cls.__module__}.{cls.__qualname__}"] = cls
    return [seen[k] for k in sorted(seen)]


def _own_call(cls: type):
    """The ``__call__`` a layer defines or inherits from a stoax class; None for data classes
    (``KVCache``, ``TrainState``) that are modules but not layers."""
    for base in cls.__mro__:
        if base in (stoax.Module, object):
            return None
        if "__call__" in vars(base):
            return vars(base)["__call__"]
    return None


LAYERS = _layers()
CALLABLE = [cls for cls in LAYERS if _own_call(cls) is not None]
_P = inspect.Parameter


def _params(fn) -> list[inspect.Parameter]:
    return list(inspect.signature(fn).parameters.values())[1:]  # less self


def test_the_walk_finds_the_layers():
    # The enumeration is what makes the rule hold for new layers: it must see them all.
    names = {cls.__name__ for cls in LAYERS}
    assert {"Dropout", "Conv", "ConvTranspose", "BatchNorm", "RNN", "Stack", "Ensemble"} <= names
    assert {"MultiHeadAttention", "TransformerEncoder", "Sampler"} <= names
    assert len(CALLABLE) >= 30, sorted(cls.__name__ for cls in CALLABLE)


def _init_problems(cls: type) -> list[str]:
    problems = []
    for p in _params(cls.__init__):
        where = f"{cls.__module__}.{cls.__qualname__}.__init__ parameter {p.name!r}"
        if p.kind in (_P.VAR_POSITIONAL, _P.VAR_KEYWORD, _P.POSITIONAL_ONLY):
            problems.append(f"{where}: is {p.kind.description}; name every parameter")
        elif p.name in KEYWORD_ONLY_NAMES or p.name.endswith("_init"):
            if p.kind is not _P.KEYWORD_ONLY:
                problems.append(f"{where}: must be keyword-only (put it after `*`)")
        elif p.kind is not _P.POSITIONAL_OR_KEYWORD:
            problems.append(
                f"{where}: a hyper-parameter must be positional-or-keyword (put it before `*`)"
            )
    return problems


def _call_problems(cls: type) -> list[str]:
    problems = []
    params = _params(_own_call(cls))
    if "key" not in {p.name for p in params}:
        problems.append(f"{cls.__qualname__}.__call__: must accept `key` (keyword-only)")
    for p in params:
        where = f"{cls.__module__}.{cls.__qualname__}.__call__ parameter {p.name!r}"
        if p.kind in (_P.VAR_POSITIONAL, _P.POSITIONAL_ONLY):
            problems.append(f"{where}: is {p.kind.description}; inputs are named parameters")
        elif p.kind is _P.POSITIONAL_OR_KEYWORD:
            if p.name == "key":
                problems.append(f"{where}: must be keyword-only (put it after `*`)")
            elif p.default is not _P.empty and (cls.__name__, p.name) not in OPTIONAL_INPUTS:
                problems.append(
                    f"{where}: an optional positional parameter is a call option; make it "
                    "keyword-only (or, if it is a true input, add it to OPTIONAL_INPUTS)"
                )
    return problems


@pytest.mark.parametrize("cls", LAYERS, ids=lambda c: c.__qualname__)
def test_constructor_follows_the_rule(cls):
    assert not _init_problems(cls), "\n".join(_init_problems(cls))


@pytest.mark.parametrize("cls", CALLABLE, ids=lambda c: c.__qualname__)
def test_call_follows_the_rule(cls):
    assert not _call_problems(cls), "\n".join(_call_problems(cls))


def test_the_checks_catch_a_breach():
    # A layer with each kind of breach: the test above must not be one that cannot fail.
    class Bad(stoax.Module):
        rate: float = 0.5
        training: bool = True  # positional: a breach

        def __call__(self, x, mask=None, *, key=None):  # mask positional: a breach
            return x

    class Hidden(stoax.Module):
        def __init__(self, features: int, *, eps: float = 1e-6):  # eps keyword-only: a breach
            self.features = features

        features: int = 0

        def __call__(self, x, key=None):  # key positional: a breach
            return x

    assert [m.split(":")[0] for m in _init_problems(Bad)] == [
        f"{__name__}.{Bad.__qualname__}.__init__ parameter 'training'"
    ]
    assert "'mask'" in " ".join(_call_problems(Bad))
    assert "'eps'" in " ".join(_init_problems(Hidden))
    assert "'key'" in " ".join(_call_problems(Hidden))


def test_conv_and_conv_transpose_share_their_positions():
    # Conv(3, 8, 3, 2, "VALID") and ConvTranspose(3, 8, 3, 2, "VALID") mean the same thing.
    conv = [p.name for p in _params(stoax.nn.Conv.__init__) if p.kind is _P.POSITIONAL_OR_KEYWORD]
    transpose = [
        p.name
        for p in _params(stoax.nn.ConvTranspose.__init__)
        if p.kind is _P.POSITIONAL_OR_KEYWORD
    ]
    shared = [name for name in transpose if name in conv]
    assert shared == transpose, f"ConvTranspose's {transpose} are not all in Conv's {conv}"
    assert conv[: len(shared)] == shared, f"Conv {conv} vs ConvTranspose {transpose}"


def _drop_ins() -> list[tuple[type, type]]:
    pairs = []
    for module in MODULES:
        peer_name = PEERS.get(module.__name__)
        if peer_name is None:
            continue
        peer = importlib.import_module(peer_name)
        for cls in _public_classes(module):
            if cls.__module__ == module.__name__ and hasattr(peer, cls.__name__):
                pairs.append((cls, getattr(peer, cls.__name__)))
    return pairs


def _shape(fn) -> list[tuple[str, str, object]]:
    return [(p.name, p.kind.description, p.default) for p in _params(fn)]


@pytest.mark.parametrize("pair", _drop_ins(), ids=lambda pair: pair[0].__module__)
def test_interop_drop_ins_keep_their_peer_signature(pair):
    ours, peer = pair
    for method in ("__init__", "__call__"):
        assert _shape(getattr(ours, method)) == _shape(getattr(peer, method)), (
            f"{ours.__module__}.{ours.__name__}.{method} must keep the signature of "
            f"{peer.__module__}.{peer.__name__}.{method}: it is a drop-in replacement"
        )


def _documented_call_args(call) -> set[str]:
    """The names in the ``Args:`` section of ``call``'s own docstring (Google style; an entry
    ``a, b: ...`` names both; ``**kwargs`` is kept with its stars)."""
    doc = inspect.cleandoc(call.__doc__ or "")  # not inspect.getdoc: no inherited docstrings
    names: set[str] = set()
    lines = doc.splitlines()
    for i, line in enumerate(lines):
        if line.strip() != "Args:":
            continue
        indent = None
        for entry in lines[i + 1 :]:
            if not entry.strip():
                continue
            width = len(entry) - len(entry.lstrip())
            if indent is None:
                indent = width
            if width < indent or (width == indent and ":" not in entry):
                break
            if width == indent:
                head = entry.strip().split(":", 1)[0].split(" (", 1)[0]
                names.update(name.strip() for name in head.split(","))
    return names


@pytest.mark.parametrize("cls", CALLABLE, ids=lambda c: c.__qualname__)
def test_call_arguments_are_documented(cls):
    # In __call__'s own "Args:" section, which the API reference renders under the layer
    # (docs/_griffe/stoax_docs.py) and help(layer) shows.
    call = _own_call(cls)
    documented = _documented_call_args(call)
    missing = [
        p.name
        for p in _params(call)
        if p.name not in documented
        and not (p.kind is _P.VAR_KEYWORD and f"**{p.name}" in documented)
    ]
    assert not missing, (
        f"{cls.__module__}.{cls.__qualname__}.__call__ does not document {missing} in the "
        "'Args:' section of its docstring"
    )


def test_documented_call_args_reads_google_sections():
    def call(self, x, *, key=None, **kwargs):
        """Summary.

        Args:
            x: input, described on
                two lines.
            key, other: shared text.
            **kwargs: options.

        Returns:
            y: not an argument.
        """

    assert _documented_call_args(call) == {"x", "key", "other", "**kwargs"}
