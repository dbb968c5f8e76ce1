"""fastdnas: fused C++/CUDA kernels and complete search systems for differentiable NAS."""
from . import _extension

_extension.load()

from . import ops, reference  # noqa: E402

__version__ = "0.1.0"
__all__ = ["ops", "reference"]
