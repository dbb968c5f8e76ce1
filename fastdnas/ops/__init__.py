"""Public wrappers of the compiled ops, with their fake (meta) kernels and autograd formulas (those of
mixed_node, mixed_sum, depthwise_conv2d and depthwise_conv2d_segments are in C++, csrc/*/*_autograd.cpp): one module per op, as in csrc/. The library is loaded before any module registers its fake kernels.

``fastdnas.ops.mixed_sum`` (and mixed_node, resize_sum, trellis_aggregate) is the op, not its module: a
test patching a name the op's code reads patches ``sys.modules["fastdnas.ops.mixed_sum"]``."""
from .. import _extension

_extension.load()

from .common import INT64_MAX  # noqa: E402
from .depthwise_conv import MAX_DEPTHWISE_GEOMETRY, depthwise_conv2d  # noqa: E402
from .depthwise_segments import MAX_DEPTHWISE_SEGMENTS, depthwise_conv2d_segments  # noqa: E402
from .mixed_node import (  # noqa: E402
    FREE_AVG_POOL, FREE_MAX_POOL, FREE_PLAIN_AVG_POOL, FREE_PLAIN_MAX_POOL, FREE_SKIP, MAX_NODE_CONV_OUTPUTS,
    MAX_NODE_EDGES, MAX_NODE_FREE_ITEMS, mixed_node)
from .mixed_sum import MAX_MIXED_SUM_INPUTS, mixed_sum  # noqa: E402
from .resize_sum import MAX_RESIZE_SUM_INPUTS, resize_sum  # noqa: E402
from .trellis_aggregate import MAX_TRELLIS_BLOCKS_PER_CELL, MAX_TRELLIS_CELLS, trellis_aggregate  # noqa: E402
