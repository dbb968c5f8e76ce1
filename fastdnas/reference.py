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


# Kinds of the parameter-free candidates of mixed_node (csrc/mixed_node/mixed_node.h).
FREE_MAX_POOL, FREE_AVG_POOL, FREE_SKIP, FREE_PLAIN_AVG_POOL, FREE_PLAIN_MAX_POOL = 0, 1, 2, 3, 4


def mixed_node(edge_inputs, strides, conv_outputs, weights, free_items, free_kinds, conv_items,
               running_mean=None, running_var=None, eps=1e-5):
    """A DARTS search node with its parameter-free candidates and search-mode BatchNorms inside.

    ``weights`` is [E, P] (one row of primitive weights per edge input). Free item i is the
    primitive ``free_items[i] = e * P + p`` (weight ``weights[e, p]``) applied to
    ``edge_inputs[e]``: kind 0 BN(max_pool2d(3, strides[e], 1)), kind 1
    BN(avg_pool2d(3, strides[e], 1, count_include_pad=False)), kind 2 the identity (stride 1),
    kind 3 avg_pool2d(3, strides[e], 1, count_include_pad=False) without BN, kind 4
    max_pool2d(3, strides[e], 1) without BN.
    ``conv_outputs[k]`` is a conv op's output before its final BatchNorm, weighted by the flat
    entry ``conv_items[k]`` of weights. Every BN is BatchNorm(affine=False, eps) on the batch
    statistics, or on ``running_mean``/``running_var`` [B, C] when given. BN rows: the pooled free
    items in order, then the conv outputs.

    Returns (sum, mean [B, C], var [B, C]): the node and the statistics each BN used (biased
    batch variance; zeros for an empty batch), in the accumulation dtype.
    """
    dtype = edge_inputs[0].dtype
    acc = accumulation_dtype(dtype)
    flat_weights = weights.reshape(-1).to(acc)
    batch_stats = running_mean is None
    F = torch.nn.functional
    means, variances, terms = [], [], []

    def batch_norm(v):
        row = len(means)
        if batch_stats:
            if v.numel() == 0:
                mean = var = v.new_zeros(v.shape[1])
            else:
                var, mean = torch.var_mean(v, dim=(0, 2, 3), unbiased=False)
            out = F.batch_norm(v, None, None, training=True, eps=eps)
        else:
            mean, var = running_mean[row].to(acc), running_var[row].to(acc)
            out = F.batch_norm(v, mean, var, training=False, eps=eps)
        means.append(mean)
        variances.append(var)
        return out

    P = weights.shape[1]
    for item, kind in zip(free_items, free_kinds):
        x = edge_inputs[item // P].to(acc)
        stride = strides[item // P]
        if kind == FREE_MAX_POOL:
            value = batch_norm(F.max_pool2d(x, 3, stride, 1))
        elif kind == FREE_AVG_POOL:
            value = batch_norm(F.avg_pool2d(x, 3, stride, 1, count_include_pad=False))
        elif kind == FREE_PLAIN_AVG_POOL:  # the NAS-Bench-201 pool: no BatchNorm
            value = F.avg_pool2d(x, 3, stride, 1, count_include_pad=False)
        elif kind == FREE_PLAIN_MAX_POOL:  # the GDAS authors' search pool: no BatchNorm
            value = F.max_pool2d(x, 3, stride, 1)
        else:
            value = x
        terms.append(flat_weights[item] * value)
    for item, y in zip(conv_items, conv_outputs):
        terms.append(flat_weights[item] * batch_norm(y.to(acc)))
    out = sum(terms).to(dtype)
    C = edge_inputs[0].shape[1]
    stats = [torch.stack(s) if s else torch.zeros(0, C, dtype=acc) for s in (means, variances)]
    return out, stats[0], stats[1]
