"""Layers: ``stoax.nn``."""

from stoax.nn._attention import MultiHeadAttention
from stoax.nn._checks import MissingKeyError
from stoax.nn._conv import Conv
from stoax.nn._drop_path import DropPath
from stoax.nn._dropout import Dropout
from stoax.nn._embedding import Embedding
from stoax.nn._gaussian_noise import GaussianNoise
from stoax.nn._kv_cache import KVCache
from stoax.nn._layer_norm import LayerNorm
from stoax.nn._linear import Linear
from stoax.nn._mlp import MLP
from stoax.nn._rms_norm import RMSNorm
from stoax.nn._sequential import Sequential
from stoax.nn._transformer import TransformerBlock, TransformerEncoder
from stoax.transforms import Ensemble, Stack

__all__ = [
    "Conv",
    "DropPath",
    "Dropout",
    "Embedding",
    "Ensemble",
    "GaussianNoise",
    "KVCache",
    "LayerNorm",
    "Linear",
    "MLP",
    "MissingKeyError",
    "MultiHeadAttention",
    "RMSNorm",
    "Sequential",
    "Stack",
    "TransformerBlock",
    "TransformerEncoder",
]
