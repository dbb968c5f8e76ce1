"""Loads the compiled op library, explaining clearly why when it cannot."""
import os
import sys
from importlib.machinery import EXTENSION_SUFFIXES

import torch


def _build_info():
    try:
        from . import _build_info

        return _build_info
    except ImportError:
        return None


def load():
    try:
        from . import _C  # noqa: F401  (registers the ops with torch.ops.fastdnas)
    except ImportError as error:
        info = _build_info()
        here = os.path.dirname(os.path.abspath(__file__))
        if not any(os.path.exists(os.path.join(here, "_C" + suffix)) for suffix in EXTENSION_SUFFIXES):
            # _build_info may describe a library built for another Python in the same folder.
            reason = f"it has not been built for this Python ({sys.version_info.major}.{sys.version_info.minor})"
        elif info is None:
            reason = "it has not been built"
        elif info.TORCH_VERSION != torch.__version__:
            reason = (f"it was built for torch {info.TORCH_VERSION} but torch {torch.__version__} is installed "
                      f"({error})")
        else:
            reason = f"it failed to load: {error}"
        raise ImportError(
            f"fastdnas: the compiled extension fastdnas._C cannot be used: {reason}. "
            "Build it from the repository root with: pip install --no-build-isolation -e ."
        ) from error


def cuda_kernels_built():
    """Whether the loaded library holds the CUDA kernels. Asked of the dispatcher, not of
    _build_info, so it is right for a library built elsewhere and copied in."""
    return torch._C._dispatch_has_kernel_for_dispatch_key("fastdnas::mixed_sum", "CUDA")
