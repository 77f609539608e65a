"""stoax: neural-network modules for JAX with randomness you can trust."""

from stoax import distributed, inference, keys, nn, random, sharding
from stoax._edit import map_modules, replace_at
from stoax._mode import eval_mode, set_mode, train_mode
from stoax._module import FrozenDict, Module, field, is_array, is_module
from stoax._partition import combine, partition, trainable
from stoax._precision import cast
from stoax._state import StateError, apply, has_state, state_field
from stoax._summary import count_params, tabulate
from stoax.audit import audit  # the callable object; the package stoax.audit is its namespace
from stoax.keys import step_key
from stoax.transforms import scan

__version__ = "0.1.0"

__all__ = [
    "FrozenDict",
    "Module",
    "StateError",
    "apply",
    "audit",
    "cast",
    "combine",
    "count_params",
    "distributed",
    "eval_mode",
    "field",
    "has_state",
    "inference",
    "is_array",
    "is_module",
    "keys",
    "map_modules",
    "nn",
    "partition",
    "random",
    "replace_at",
    "scan",
    "set_mode",
    "sharding",
    "state_field",
    "step_key",
    "tabulate",
    "train_mode",
    "trainable",
]
