"""Mixed precision for search and retraining: autocast, and loss scaling for float16.

Parameters, their gradients and the optimizer states stay float32 (the architecture parameters
included); autocast runs convolutions and matmuls in the half type, and the fused node sums take
half inputs and accumulate in float32 (``ops.mixed_sum`` and friends cast their inputs to the
autocast dtype, never their weights). float16 needs a GradScaler so small gradients do not
flush to zero; bfloat16 has float32's exponent range and needs none.
"""
import contextlib

import torch

AMP_MODES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _read_autocast_availability(device_type):
    try:
        return torch.amp.is_autocast_available(device_type)
    except RuntimeError:  # a device type this torch does not know
        return False


# Whether autocast exists for a device type, read once here: torch.compile cannot trace
# torch.amp.is_autocast_available in every supported torch (2.11 fails), but traces a dict lookup.
_AUTOCAST_AVAILABLE = {
    device_type: _read_autocast_availability(device_type)
    for device_type in ("cpu", "cuda", "meta", "xpu", "mps", "hpu", "xla", "mtia")
}


def _autocast_available(device_type):
    available = _AUTOCAST_AVAILABLE.get(device_type)
    return _read_autocast_availability(device_type) if available is None else available


class MixedPrecision:
    """The precision policy of one run: ``mode`` None (float32 throughout), "bf16" or "fp16".

    ``autocast()`` is the context for forward passes; ``scaler`` is a torch GradScaler, enabled
    for fp16 only (disabled, its ``scale``/``unscale_``/``step``/``update`` pass straight
    through, so a loop calls them unconditionally).
    """

    def __init__(self, mode=None, device="cpu"):
        if mode is not None and mode not in AMP_MODES:
            raise ValueError(f"amp must be one of {sorted(AMP_MODES)} or None, got {mode!r}")
        self.mode = mode
        self.device_type = torch.device(device).type
        self.dtype = AMP_MODES.get(mode)
        self.scaler = torch.amp.GradScaler(self.device_type, enabled=mode == "fp16")

    @property
    def enabled(self):
        return self.mode is not None

    def autocast(self):
        if not self.enabled:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def state_dict(self):
        """The loss scale and its growth counter (empty without fp16)."""
        return self.scaler.state_dict()

    def load_state_dict(self, state):
        if self.scaler.is_enabled() and state:
            self.scaler.load_state_dict(state)


def autocast_inputs(tensors):
    """``tensors`` cast to the active autocast dtype of their device (unchanged outside autocast).

    Under autocast the candidate outputs of a node come in mixed dtypes (convolutions in the
    half type, an identity edge in whatever it was given); the fused kernels need one dtype.
    """
    device_type = tensors[0].device.type
    if not _autocast_available(device_type) or not torch.is_autocast_enabled(device_type):
        return tensors
    dtype = torch.get_autocast_dtype(device_type)
    return [t.to(dtype) if t.is_floating_point() else t for t in tensors]
