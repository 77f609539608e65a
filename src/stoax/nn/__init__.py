"""Layers: ``stoax.nn``."""

from stoax.nn._alpha_dropout import AlphaDropout
from stoax.nn._attention import MultiHeadAttention
from stoax.nn._batch_norm import BatchNorm
from stoax.nn._cells import GRUCell, LSTMCell, SimpleCell
from stoax.nn._checks import MissingKeyError
from stoax.nn._conv import Conv
from stoax.nn._conv_transpose import ConvTranspose
from stoax.nn._drop_path import DropPath
from stoax.nn._dropout import Dropout
from stoax.nn._embedding import Embedding
from stoax.nn._gaussian_noise import GaussianNoise
from stoax.nn._group_norm import GroupNorm, InstanceNorm
from stoax.nn._kv_cache import KVCache
from stoax.nn._layer_norm import LayerNorm
from stoax.nn._linear import Linear
from stoax.nn._mlp import MLP
from stoax.nn._pool import AvgPool, GlobalAvgPool, MaxPool
from stoax.nn._rms_norm import RMSNorm
from stoax.nn._rnn import RNN, Bidirectional, StackedRNN
from stoax.nn._sequential import Sequential
from stoax.nn._shape import Flatten, Identity
from stoax.nn._transformer import TransformerBlock, TransformerEncoder
from stoax.transforms import Ensemble, Stack

__all__ = [
    "AlphaDropout",
    "AvgPool",
    "BatchNorm",
    "Bidirectional",
    "Conv",
    "ConvTranspose",
    "DropPath",
    "Dropout",
    "Embedding",
    "Ensemble",
    "Flatten",
    "GRUCell",
    "GaussianNoise",
    "GlobalAvgPool",
    "GroupNorm",
    "Identity",
    "InstanceNorm",
    "KVCache",
    "LSTMCell",
    "LayerNorm",
    "Linear",
    "MLP",
    "MaxPool",
    "MissingKeyError",
    "MultiHeadAttention",
    "RMSNorm",
    "RNN",
    "Sequential",
    "SimpleCell",
    "Stack",
    "StackedRNN",
    "TransformerBlock",
    "TransformerEncoder",
]
