"""The supernets of PC-DARTS and GDAS written as plainly as the papers state them: the oracle the
modules of ``fastdnas.darts`` (every backend) must equal. Kept plain.

Each function runs a network's own submodules (stem, preprocessing, every candidate operation,
classifier) and its architecture parameters, but computes every edge, node and sample itself,
edge by edge, from the formulas.
"""
import torch
import torch.nn.functional as F


def shuffle_channels(x, groups):
    """ShuffleNet's channel shuffle: [N, groups * c, H, W] viewed [N, groups, c, H, W],
    transposed to [N, c, groups, H, W], flattened back."""
    n, channels, height, width = x.shape
    x = x.view(n, groups, channels // groups, height, width)
    return torch.transpose(x, 1, 2).contiguous().view(n, channels, height, width)


def pc_darts_edge(edge, x, op_weights, k):
    """One PC-DARTS edge: the first C/k channels through sum_o w_o * o(x), the rest bypassing
    (2x2 max pool where the edge halves the resolution), concatenated and shuffled."""
    channels = x.shape[1]
    part, rest = x[:, : channels // k], x[:, channels // k :]
    mixed = sum(w * op(part) for w, op in zip(op_weights, edge._ops))
    if mixed.shape[2] != x.shape[2]:
        rest = F.max_pool2d(rest, kernel_size=2, stride=2, ceil_mode=True)
    return shuffle_channels(torch.cat([mixed, rest], dim=1), k)


def pc_darts_forward(net, x):
    """Logits of a ``PCDartsNetwork``: node i = sum_j softmax(beta of node i's edges)_j * edge_j(state_j)."""
    k = net.partial_channels
    s0 = s1 = net.stem(x)
    for cell in net.cells:
        alphas, betas = (net.alphas_reduce, net.betas_reduce) if cell.reduction else (net.alphas_normal, net.betas_normal)
        op_weights = torch.exp(alphas) / torch.exp(alphas).sum(dim=1, keepdim=True)
        states = [cell.preprocess0(s0), cell.preprocess1(s1)]
        first = 0  # the node's first edge
        for _ in range(cell.steps):
            n = len(states)
            node_betas = betas[first : first + n]
            edge_weights = torch.exp(node_betas) / torch.exp(node_betas).sum()
            node = 0
            for j in range(n):
                node = node + edge_weights[j] * pc_darts_edge(cell._ops[first + j], states[j], op_weights[first + j], k)
            states.append(node)
            first += n
        s0, s1 = s1, torch.cat(states[-cell.multiplier :], dim=1)
    return net.classifier(net.global_pooling(s1).flatten(1))


def gdas_sample(alphas, tau, gumbels):
    """The hard Gumbel-softmax of every row: p = softmax((log pi + g) / tau), k = argmax p,
    h = one_hot(k) - stop_gradient(p) + p. Returns (h, k)."""
    log_pi = alphas - torch.logsumexp(alphas, dim=1, keepdim=True)
    z = (log_pi + gumbels) / tau
    p = torch.exp(z - z.max(dim=1, keepdim=True).values)
    p = p / p.sum(dim=1, keepdim=True)
    k = torch.argmax(p, dim=1)
    one_hot = torch.zeros_like(p)
    one_hot[torch.arange(p.shape[0]), k] = 1.0
    return one_hot - p.detach() + p, k


def gdas_forward(net, x, gumbels):
    """Logits of a ``GdasNetwork`` with the given Gumbel noise (normal, reduce): every edge runs
    its sampled op only, times its straight-through weight; a node sums its edges."""
    samples = {False: gdas_sample(net.alphas_normal, net.tau, gumbels[0]),
               True: gdas_sample(net.alphas_reduce, net.tau, gumbels[1])}
    s0 = s1 = net.stem(x)
    for cell in net.cells:
        h, k = samples[cell.reduction]
        states = [cell.preprocess0(s0), cell.preprocess1(s1)]
        first = 0
        for _ in range(cell.steps):
            node = 0
            for j, state in enumerate(states):
                e = first + j
                chosen = int(k[e])
                node = node + cell._ops[e]._ops[chosen](state) * h[e, chosen]
            first += len(states)
            states.append(node)
        s0, s1 = s1, torch.cat(states[-cell.multiplier :], dim=1)
    return net.classifier(net.global_pooling(s1).flatten(1))
