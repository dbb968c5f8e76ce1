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
