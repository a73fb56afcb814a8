"""Pure functions on sparse tensors: indexing, kernel maps, convolution, pooling and conversions."""

from jsparse3d.ops._conv import conv3d as conv3d
from jsparse3d.ops._conv import conv_transpose3d as conv_transpose3d
from jsparse3d.ops._conv import kernel_map as kernel_map
from jsparse3d.ops._dense import from_dense as from_dense
from jsparse3d.ops._dense import to_dense as to_dense
from jsparse3d.ops._elementwise import add as add
from jsparse3d.ops._elementwise import apply as apply
from jsparse3d.ops._elementwise import cat as cat
from jsparse3d.ops._elementwise import gelu as gelu
from jsparse3d.ops._elementwise import leaky_relu as leaky_relu
from jsparse3d.ops._elementwise import relu as relu
from jsparse3d.ops._elementwise import sigmoid as sigmoid
from jsparse3d.ops._elementwise import silu as silu
from jsparse3d.ops._elementwise import tanh as tanh
from jsparse3d.ops._hash import HashIndex as HashIndex
from jsparse3d.ops._hash import build_index as build_index
from jsparse3d.ops._hash import query_index as query_index
from jsparse3d.ops._kernel_map import KernelMap as KernelMap
from jsparse3d.ops._pool import avg_pool as avg_pool
from jsparse3d.ops._pool import global_avg_pool as global_avg_pool
from jsparse3d.ops._pool import global_max_pool as global_max_pool
from jsparse3d.ops._pool import max_pool as max_pool
