"""The eager PyTorch definition of every fastdnas op: the oracle the kernels must equal and the
baseline of the benchmarks. Kept forever, kept plain."""
import torch


def accumulation_dtype(dtype):
    """The dtype the kernels accumulate in: float32 for half types, else the dtype itself."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def mixed_sum(inputs, weights):
    """sum_i weights[i] * inputs[i], accumulated in float32 for half inputs, in inputs' dtype."""
    dtype = inputs[0].dtype
    acc = accumulation_dtype(dtype)
    return sum(w.to(acc) * x.to(acc) for w, x in zip(weights, inputs)).to(dtype)


def trellis_aggregate(cells, betas):
    """torch.cat([sum_t betas[t] * cells[t][b] for b], dim=1): the Auto-DeepLab node sum over
    the T cell evaluations (each a list of B blocks [N, C, H, W]), accumulated in float32 for
    half inputs, in the inputs' dtype."""
    dtype = cells[0][0].dtype
    acc = accumulation_dtype(dtype)
    blocks = [sum(beta.to(acc) * cell[b].to(acc) for beta, cell in zip(betas, cells)) for b in range(len(cells[0]))]
    return torch.cat(blocks, dim=1).to(dtype)


def resize_sum(inputs, size, weights=None):
    """sum_i weights[i] * F.interpolate(inputs[i], size, mode="bilinear", align_corners=False),
    weights defaulting to ones, accumulated in float32 for half inputs, in the inputs' dtype."""
    dtype = inputs[0].dtype
    acc = accumulation_dtype(dtype)
    if weights is None:
        weights = torch.ones(len(inputs), dtype=acc, device=inputs[0].device)
    resize = torch.nn.functional.interpolate
    resized = (resize(x.to(acc), size=tuple(size), mode="bilinear", align_corners=False) for x in inputs)
    return sum(w.to(acc) * r for w, r in zip(weights, resized)).to(dtype)
