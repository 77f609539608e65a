"""The named records of the analysis: key identities, draws, summaries.

A *key identity* is an interned :class:`Expr` -- an int naming one key value by how it was
derived. Two operations that consume the same identity consume the same key. Negative ints are
*local* identities: fresh values nothing else can equal (a key made by an operation the analysis
does not model).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable
from typing import Any, NamedTuple

import numpy as np

from stoax.audit._findings import Location

__all__ = ["DRAWS", "CONSUMERS", "Draw", "Expr", "Site", "Summary"]

# consumptions that produce random numbers ("key_data": a hash of the key's raw words by hand)
DRAWS = frozenset({"random_bits", "threefry2x32", "key_data"})
CONSUMERS = DRAWS | {"random_split"}  # every operation that consumes a key


class Expr(NamedTuple):
    """One interned identity: ``kind`` (below), a hashable ``payload`` and ``children`` (other
    identities, substituted when a summary is instantiated at a call site).

    ==============  ======================  =======================================================
    kind            payload                 children
    ==============  ======================  =======================================================
    ``param``       (input, element, legacy) --  (the key element of a jaxpr input)
    ``param_data``  input                   --  (the value of a jaxpr input)
    ``value``       (dtype, shape, bytes)   --  (a known constant value)
    ``object``      id of a large constant  --
    ``const_key``   (dtype, key data bytes) --  (a key captured as a constant)
    ``seed``        (impl, element)         (data,)
    ``wrap``        (impl, element)         (data,)
    ``split``       (shape, element)        (parent,)  only where a split child is not a fold_in
    ``fold``        element or None         (parent, data)
    ``threefry``    None                    the four operands' identities
    ``op``          (primitive, params)     operands' data identities (value numbering)
    ``array``       shape                   every element's identity
    ``index``       (shape, element)        (array, index data identities...)
    ==============  ======================  =======================================================
    """

    kind: str
    payload: Hashable
    children: tuple[int, ...] = ()


# kinds whose value depends on the jaxpr's inputs: never global
PARAM_KINDS = frozenset({"param", "param_data"})


class Site(NamedTuple):
    """A source position: the user's location and the traceback it was read from."""

    loc: Location | None
    tb: Any


@dataclasses.dataclass
class Draw:
    """One consumption of keys (``random_bits``, ``random_split``, ``threefry2x32``)."""

    prim: str
    sig: tuple  # what is drawn: primitive, shape, bit width
    ids: np.ndarray  # flat array of the consumed key identities
    deps: int  # bitmask of the jaxpr inputs the key depends on
    site: Site
    recompute: bool  # in a backward pass / rematerialisation: regenerates a forward draw
    excl: tuple = ()  # ((cond token, branch index), ...): draws in different branches exclude
    in_loop: bool = False
    shared: bool = False  # inside ``stoax.audit.shared()``: sharing declared on purpose
    reach: int = 0  # bit 0: a side effect; bit j + 1: output j of the jaxpr the draw is in
    loop_invariant: Site | None = None  # the loop in which this draw's key never changes
    carried: tuple[Site, Site] | None = None  # (draw of the previous iteration, loop): same key

    def moved(self, **changes: Any) -> Draw:
        return dataclasses.replace(self, **changes)


@dataclasses.dataclass
class Summary:
    """A jaxpr analysed in terms of its own inputs, instantiated at each call site."""

    out_deps: list[int]
    out_ids: list[np.ndarray | None]
    out_did: list[int | None]
    draws: list[Draw]
    # per input, the outputs it reaches (bit j + 1) and whether it reaches a side effect (bit 0)
    param_reach: list[int]
    num_eqns: int
