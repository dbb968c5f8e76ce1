"""trellis_aggregate, the Auto-DeepLab node sum: its wrapper and fake kernels (the kernels and the autograd
formula: csrc/trellis/)."""
from typing import Sequence

import torch
from torch import Tensor

from ..precision import autocast_inputs
from .common import (_SUPPORTED_DTYPES, _check_like_first, _check_storage_size, _check_weight_vector, _tensor,
                     _tensor_list, _type_name)

MAX_TRELLIS_CELLS = 3  # csrc/trellis/trellis_aggregate.h
MAX_TRELLIS_BLOCKS_PER_CELL = 32  # csrc/trellis/trellis_aggregate.h


def trellis_aggregate(cells: Sequence[Sequence[Tensor]], betas: Tensor) -> Tensor:
    """``torch.cat([sum_t betas[t] * cells[t][b] for b in range(B)], dim=1)`` in one fused kernel.

    Args:
        cells: T (1 to 3) cell evaluations, one per incoming transition, each the list of its B
            block outputs [N, C, H, W]; all T*B tensors share shape, dtype (float64, float32,
            float16 or bfloat16) and device. Non-contiguous tensors are accepted.
        betas: a floating tensor of shape [T] on the same device.

    Returns [N, B*C, H, W]: block b's channel slice holds ``sum_t betas[t] * cells[t][b]``,
    written straight into the concatenated output. Half inputs accumulate in float32. The
    backward pass is one fused kernel giving ``betas[t] * grad slice b`` for every block and
    ``sum_b sum(grad slice b * cells[t][b])`` for every beta (a deterministic reduction).
    """
    if not isinstance(cells, (list, tuple)):
        raise TypeError(f"trellis_aggregate: cells must be a list of cell evaluations (each a list of tensors), got "
                        f"{_type_name(cells)}")
    cells = [_tensor_list("trellis_aggregate", f"cells[{t}]", cell) for t, cell in enumerate(cells)]
    betas = _tensor("trellis_aggregate", "betas", betas)
    if not 1 <= len(cells) <= MAX_TRELLIS_CELLS:
        raise ValueError(
            f"trellis_aggregate: cells must hold 1 to {MAX_TRELLIS_CELLS} cell evaluations "
            f"(one per incoming transition), got {len(cells)}"
        )
    if not cells[0]:
        raise ValueError("trellis_aggregate: cells[0] holds no block outputs")
    for t, cell in enumerate(cells):
        if len(cell) != len(cells[0]):
            raise ValueError(
                f"trellis_aggregate: cells[{t}] holds {len(cell)} blocks but cells[0] holds {len(cells[0])}; "
                "every cell evaluation must give the same number of blocks"
            )
    # The schema takes one flat list, cell-major: blocks[t * B + b] = cells[t][b].
    blocks = autocast_inputs([block for cell in cells for block in cell])
    return torch.ops.fastdnas.trellis_aggregate(blocks, len(cells), betas)


def _check_trellis_aggregate_args(blocks, num_cells, betas, op="trellis_aggregate"):
    """Mirrors csrc/trellis/trellis_aggregate.h; returns the number of blocks per cell."""
    torch._check(
        1 <= num_cells <= MAX_TRELLIS_CELLS,
        lambda: f"{op}: cells must hold 1 to {MAX_TRELLIS_CELLS} cell evaluations (one per incoming transition), "
        f"got {num_cells}",
    )
    torch._check(
        len(blocks) > 0 and len(blocks) % num_cells == 0,
        lambda: f"{op}: blocks holds {len(blocks)} tensors, not a positive multiple of num_cells={num_cells}; "
        "every cell evaluation must give the same number of blocks",
    )
    B = len(blocks) // num_cells
    torch._check(
        B <= MAX_TRELLIS_BLOCKS_PER_CELL,
        lambda: f"{op}: each cell gives {B} blocks; at most {MAX_TRELLIS_BLOCKS_PER_CELL} are supported",
    )
    first = blocks[0]
    torch._check(
        first.dtype in _SUPPORTED_DTYPES,
        lambda: f"{op}: cells must be float64, float32, float16 or bfloat16, got {first.dtype}",
    )
    torch._check(first.dim() == 4, lambda: f"{op}: cells[0][0] must be 4-D [N, C, H, W], got shape {list(first.shape)}")
    torch._check(B * first.shape[1] < 2**63,
                 lambda: f"{op}: the output's {B} * {first.shape[1]} channels (blocks per cell * C) overflow int64")
    _check_storage_size(op, "the output (from the cells' block shape and blocks per cell)",
                        _trellis_output_shape(first, B), first.dtype)
    for i, x in enumerate(blocks):
        name = f"cells[{i // B}][{i % B}]"
        _check_like_first(op, name, x, "cells[0][0]", first)
        torch._check(
            x.shape == first.shape,
            lambda: f"{op}: {name} has shape {list(x.shape)} but cells[0][0] has shape {list(first.shape)}; "
            "all must match",
        )
    _check_weight_vector(betas, num_cells, first.device, op, "betas", "one weight per cell evaluation")
    return B


def _trellis_output_shape(block, blocks_per_cell):
    N, C, H, W = block.shape
    return (N, blocks_per_cell * C, H, W)


@torch.library.register_fake("fastdnas::trellis_aggregate")
def _trellis_aggregate_fake(blocks, num_cells, betas):
    B = _check_trellis_aggregate_args(blocks, num_cells, betas)
    return blocks[0].new_empty(_trellis_output_shape(blocks[0], B))


@torch.library.register_fake("fastdnas::_trellis_aggregate_backward")
def _trellis_aggregate_backward_fake(grad, blocks, num_cells, betas, output_mask=(True, True)):
    op = "trellis_aggregate (backward)"
    B = _check_trellis_aggregate_args(blocks, num_cells, betas, op)
    shape = _trellis_output_shape(blocks[0], B)
    torch._check(
        grad.shape == shape and grad.dtype == blocks[0].dtype and grad.device == blocks[0].device,
        lambda: f"{op}: grad must have shape {list(shape)}, dtype {blocks[0].dtype} "
        f"and device {blocks[0].device}",
    )
    grad_blocks = [torch.empty_like(x, memory_format=torch.contiguous_format) for x in blocks] if output_mask[0] else []
    return grad_blocks, torch.empty_like(betas, memory_format=torch.contiguous_format) if output_mask[1] else None


# Autograd: csrc/trellis/trellis_aggregate_autograd.cpp.
