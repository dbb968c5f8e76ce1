"""The supernets of PC-DARTS, GDAS and the parts of the other successors (DrNAS, SDARTS,
beta-DARTS, FairDARTS) written as plainly as the papers state them: the oracle the
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
    its sampled op only, times its straight-through weight; a node sums its edges. The authors'
    supernet (``AuthorsGdasNetwork``) puts its BatchNorm-ReLU ``lastact`` before the pooling."""
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
    if hasattr(net, "lastact"):
        s1 = net.lastact(s1)
    return net.classifier(net.global_pooling(s1).flatten(1))


def gdas_authors_cell(weights, steps, primitives):
    """The authors' GDAS genotype of one cell: node i lists every (op, j, weight) of its edges
    j = 0 .. i + 1, 'none' left out, sorts them by weight (largest first, stable) and keeps the
    first two as (op, j)."""
    gene, first = [], 0
    for i in range(steps):
        listed = []
        for j in range(2 + i):
            for k, name in enumerate(primitives):
                if name != "none":
                    listed.append((name, j, float(weights[first + j][k])))
        listed = sorted(listed, key=lambda item: -item[2])
        gene += [(name, j) for name, j, _ in listed[:2]]
        first += 2 + i
    return gene


# --- The parts of the successors (fastdnas.darts.parts), from the papers' formulas -------------


def softmax_rows(a):
    e = torch.exp(a - a.max(dim=1, keepdim=True).values)
    return e / e.sum(dim=1, keepdim=True)


def composed_weights(net, noise=None):
    """(normal, reduce) weights of a ``ComposedNetwork``'s sampler, written out: softmax; sigmoid
    1 / (1 + exp(-a)); Dirichlet(ELU(theta) + 1) drawn with torch's generator (DrNAS draws with
    torch.distributions too); GDAS's hard sample times its one-hot (the dense form)."""
    out = []
    for i, alphas in enumerate((net.alphas_normal, net.alphas_reduce)):
        if net.sampler == "softmax":
            out.append(softmax_rows(alphas))
        elif net.sampler == "sigmoid":
            out.append(1 / (1 + torch.exp(-alphas)))
        elif net.sampler == "dirichlet":
            beta = torch.where(alphas > 0, alphas, torch.exp(alphas) - 1) + 1
            w = torch.distributions.Dirichlet(beta).rsample()
            mask = getattr(net, "mask_reduce" if i else "mask_normal", None)
            out.append(w if mask is None else masked_rows(w, mask))
        else:
            h, k = gdas_sample(alphas, net.tau, noise[i])
            mask = torch.zeros_like(h)
            mask[torch.arange(h.shape[0]), k] = 1.0
            out.append(h * mask)
    return out


def masked_rows(w, mask):
    """DrNAS's pruned draw: the pruned entries set to 0, each row divided by its sum."""
    kept = torch.where(mask, w, torch.zeros_like(w))
    return kept / kept.sum(dim=1, keepdim=True)


def drnas_prune(theta, keep, mask=None):
    """DrNAS's pruning, row by row: the ``keep`` largest theta among the entries not pruned before
    (all of them without a mask) stay, every other entry becomes 0; returns (theta, mask)."""
    new_theta, new_mask = torch.zeros_like(theta), torch.zeros_like(theta, dtype=torch.bool)
    for r in range(theta.shape[0]):
        alive = [j for j in range(theta.shape[1]) if mask is None or bool(mask[r, j])]
        for j in sorted(alive, key=lambda j: -float(theta[r, j]))[:keep]:
            new_theta[r, j], new_mask[r, j] = theta[r, j], True
    return new_theta, new_mask


def net2wider(tensor, dim, index):
    """net2wider's copy: the tensor with its slices ``index`` along ``dim`` appended (no rescaling)."""
    return torch.cat([tensor, tensor.index_select(dim, index)], dim=dim)


def composed_forward(net, x, weights):
    """Logits of a ``ComposedNetwork`` with the given (normal, reduce) weights: edge by edge; with
    partial channels each edge as PC-DARTS writes it, a node weighting its edges by the softmax of
    its betas (edge normalisation) or by 1."""
    k = net.partial_channels
    partial = k > 1 or net.edge_normalised
    s0 = s1 = net.stem(x)
    for cell in net.cells:
        op_weights = weights[int(cell.reduction)]
        betas = None
        if net.edge_normalised:
            betas = net.betas_reduce if cell.reduction else net.betas_normal
        states = [cell.preprocess0(s0), cell.preprocess1(s1)]
        first = 0
        for _ in range(cell.steps):
            n = len(states)
            if betas is None:
                edge_weights = [1.0] * n
            else:
                edge_weights = torch.exp(betas[first : first + n]) / torch.exp(betas[first : first + n]).sum()
            node = 0
            for j in range(n):
                edge = cell._ops[first + j]
                if partial:
                    out = pc_darts_edge(edge, states[j], op_weights[first + j], k)
                else:
                    out = sum(w * op(states[j]) for w, op in zip(op_weights[first + j], edge._ops))
                node = node + edge_weights[j] * out
            states.append(node)
            first += n
        s0, s1 = s1, torch.cat(states[-cell.multiplier :], dim=1)
    return net.classifier(net.global_pooling(s1).flatten(1))


def beta_decay(alphas_list, epoch):
    """(50 epoch / 100) * sum over cells of the mean over edges of log sum_k exp(alpha_ek)."""
    total = 0
    for a in alphas_list:
        total = total + torch.log(torch.exp(a).sum(dim=1)).mean()
    return 50.0 * epoch / 100 * total


def zero_one(alphas_list):
    """10 * -(1/N) sum over all N entries of both cells of (sigma(alpha) - 1/2)^2."""
    s = torch.cat([1 / (1 + torch.exp(-a.flatten())) for a in alphas_list])
    return 10.0 * -((s - 0.5) ** 2).sum() / s.numel()


def dirichlet_kl(alphas_list):
    """1e-3 * sum over edges of KL(Dir(b) || Dir(1)) = lgamma(B) - sum lgamma(b_k) - lgamma(K)
    + sum (b_k - 1)(digamma(b_k) - digamma(B)), b = ELU(theta) + 1, B = sum b_k."""
    total = 0
    for theta in alphas_list:
        b = torch.where(theta > 0, theta, torch.exp(theta) - 1) + 1
        big_b = b.sum(dim=1)
        ops = b.shape[1]
        kl = (torch.lgamma(big_b) - torch.lgamma(b).sum(dim=1) - torch.lgamma(torch.tensor(float(ops), dtype=b.dtype))
              + ((b - 1) * (torch.digamma(b) - torch.digamma(big_b)[:, None])).sum(dim=1))
        total = total + kl.sum()
    return 1e-3 * total


def clip_rows(weights):
    """SDARTS's clip, row by row: remember the argmax, clamp to [0, 1], an all-zero row gets 1
    at that argmax, divide by the row's sum."""
    rows = []
    for row in weights:
        best = int(torch.argmax(row))
        row = torch.clamp(row, 0, 1)
        if float(row.sum()) == 0.0:
            row = torch.zeros_like(row)
            row[best] = 1.0
        rows.append(row / row.sum())
    return torch.stack(rows)


def sdarts_random(simplex, epsilon, uniform):
    """clip(A + delta) with delta = (2u - 1) eps, u the given uniform draws."""
    return clip_rows(simplex + (2 * uniform - 1) * epsilon)


def sdarts_adversarial(loss_at, simplex, epsilon, uniform, steps=7):
    """SDARTS-ADV written as its paper's PGD: random start, ``steps`` sign-ascent steps of size
    2 eps / steps on the loss, each projected to the eps box around A0 and clipped; A0 again if
    the attack ended below the loss at A0."""
    with torch.no_grad():
        before = float(loss_at(simplex))
    current = [sdarts_random(a, epsilon, u) for a, u in zip(simplex, uniform)]
    for _ in range(steps):
        current = [a.detach().clone().requires_grad_(True) for a in current]
        loss = loss_at(current)
        grads = torch.autograd.grad(loss, current)
        with torch.no_grad():
            current = [clip_rows(a0 + torch.clamp(a + 2 * epsilon / steps * torch.sign(g) - a0, -epsilon, epsilon))
                       for a, g, a0 in zip(current, grads, simplex)]
    with torch.no_grad():
        after = float(loss_at(current))
    return list(simplex) if after < before else current


def fair_threshold(weights, steps, primitives, threshold=0.85):
    """FairDARTS's 'threshold_sparse': node by node, the two edges with the largest sigma, each
    edge's best op kept when its sigma reaches the threshold: [(op, node, state)]."""
    cell, first = [], 0
    names = [k for k, p in enumerate(primitives) if p != "none"]
    for i in range(steps):
        n = 2 + i
        strength = [max(float(weights[first + j][k]) for k in names) for j in range(n)]
        for j in sorted(range(n), key=lambda j: -strength[j])[:2]:
            best = names[0]
            for k in names:
                if float(weights[first + j][k]) > float(weights[first + j][best]):
                    best = k
            if float(weights[first + j][best]) >= threshold:
                cell.append((primitives[best], 2 + i, j))
        first += n
    return cell


def darts_pt_weights(softmax, ops, removed):
    """DARTS-PT's projected weights, edge by edge: a decided edge is one-hot at its operation, a
    removed edge all zero, any other edge keeps its softmax row."""
    rows = []
    for e in range(softmax.shape[0]):
        row = softmax[e].clone()
        if int(ops[e]) >= 0:
            row = torch.zeros_like(row)
            row[int(ops[e])] = 1.0
        if bool(removed[e]):
            row = torch.zeros_like(row)
        rows.append(row)
    return torch.stack(rows)
