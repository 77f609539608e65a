"""stoax inside the models users already have, and their layers inside stoax.

Each submodule needs its peer library (install the ``flax`` or ``equinox`` extra) and is imported
by its own name, never by ``import stoax``:

* :mod:`stoax.interop.linen` -- ``Dropout`` for Flax linen, drop-in for ``flax.linen.Dropout``;
* :mod:`stoax.interop.nnx` -- ``Dropout`` for Flax NNX, drop-in for ``flax.nnx.Dropout``, and
  ``params``, the optimiser filter for an NNX model that holds stoax modules;
* :mod:`stoax.interop.equinox` -- ``Dropout`` for Equinox, drop-in for ``equinox.nn.Dropout``;
* :mod:`stoax.interop.porting` -- weights of Flax and Equinox layers loaded into stoax layers.

The ``Dropout`` classes keep the peer's signature, its conventions and its statistics (each
element dropped with probability ``rate``, the others scaled by ``1/(1-rate)``) and use stoax's
lean primitive (:func:`stoax.random.dropout`): the backward pass regenerates the mask from the
key instead of storing it, so dropout adds almost nothing to training memory.
"""
