"""MixedOp: the continuous relaxation of one DARTS edge, sum_k softmax(alpha)_k * op_k(x)."""
import torch
import torch.nn as nn

from .. import reference
from .operations import OPS, PRIMITIVES

BACKENDS = ("fused", "reference")


def check_backend(backend):
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


class MixedOp(nn.Module):
    """One edge of a DARTS search cell.

    ``MixedOp(C, stride)(x, weights)`` matches the original DARTS MixedOp: ``weights`` holds one
    (softmax) weight per primitive. ``backend="fused"`` sums the candidate outputs with the fused
    ``mixed_sum`` kernel and never computes the 'none' op; ``backend="reference"`` is the original
    eager expression, 'none' included.
    """

    def __init__(self, C, stride, primitives=PRIMITIVES, backend="fused"):
        super().__init__()
        unknown = [p for p in primitives if p not in OPS]
        if unknown:
            raise ValueError(f"primitives: unknown operation(s) {unknown}; known: {sorted(OPS)}")
        if len(primitives) == 0:
            raise ValueError("primitives must name at least one operation")
        self.primitives = tuple(primitives)
        self.stride = stride
        self.backend = check_backend(backend)
        self._ops = nn.ModuleList(OPS[p](C, stride, False) for p in self.primitives)
        # Indices of the primitives that produce something other than zeros.
        self.computed_indices = [i for i, p in enumerate(self.primitives) if p != "none"]
        if not self.computed_indices:
            raise ValueError("primitives: at least one operation other than 'none' is needed")
        # The same selection as an index that costs no host-to-device copy per call (a Python list
        # index would build a tensor each time, which CUDA-graph capture forbids): a slice when the
        # computed primitives are contiguous (always for the DARTS set), else a buffer on the device.
        first, last = self.computed_indices[0], self.computed_indices[-1]
        contiguous = self.computed_indices == list(range(first, last + 1))
        self._computed_slice = slice(first, last + 1) if contiguous else None
        self.register_buffer("_computed_index_tensor", None if contiguous else torch.tensor(self.computed_indices),
                             persistent=False)

    @property
    def computed_index(self):
        """Index of the last dimension of the weights that selects ``computed_indices``."""
        return self._computed_slice if self._computed_slice is not None else self._computed_index_tensor

    def candidate_outputs(self, x):
        """Outputs of the computed (non-'none') candidates, in ``computed_indices`` order."""
        return [self._ops[i](x) for i in self.computed_indices]

    def forward(self, x, weights):
        if weights.dim() != 1 or weights.shape[0] != len(self.primitives):
            raise ValueError(
                f"weights must have shape [{len(self.primitives)}] (one per primitive), got {list(weights.shape)}"
            )
        if self.backend == "reference":
            return sum(w * op(x) for w, op in zip(weights, self._ops))
        from .. import ops  # the compiled extension is needed only here

        return ops.mixed_sum(self.candidate_outputs(x), weights[self.computed_index])
