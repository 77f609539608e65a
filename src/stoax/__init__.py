"""stoax: neural-network modules for JAX with randomness you can trust."""

from stoax import audit, inference, keys, nn, random, sharding
from stoax._edit import map_modules, replace_at
from stoax._mode import eval_mode, set_mode, train_mode
from stoax._module import Module, field, is_array, is_module
from stoax._partition import combine, partition, trainable
from stoax.keys import step_key
from stoax.transforms import scan

__version__ = "0.1.0"

__all__ = [
    "Module",
    "audit",
    "combine",
    "eval_mode",
    "field",
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
    "step_key",
    "train_mode",
    "trainable",
]
