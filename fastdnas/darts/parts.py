"""The parts the DARTS successors are made of (SPEC.md sections 5, 5b, 8.1-8.4), each a small
function of the architecture parameters. ``ComposedNetwork`` (``composed.py``) combines them; the
weights they give feed the fused kernels exactly as DARTS's softmax does.

Architecture weights (``SAMPLERS``), one [edges, ops] tensor per cell type:

- ``softmax``: softmax(alpha) per edge (DARTS).
- ``gumbel``: the hard Gumbel-softmax sample of GDAS, straight-through (SPEC 5b); dense here:
  every candidate runs with weight ``one_hot * h`` (the value of the sampled op's h is 1).
- ``dirichlet``: w ~ Dir(beta).rsample() with beta = ELU(theta) + 1, a new draw every forward,
  training and eval (DrNAS, SPEC 8.1: utils.py:167-194, search_model.py:68). After DrNAS's
  pruning (``progressive.py``) the draw is masked: w <- w * m / sum(w * m) (``masked``).
- ``sigmoid``: sigma(alpha), independent per op, not normalised (FairDARTS, SPEC 8.4:
  model_search.py:104-126).

Regularisers on the architecture loss (``REGULARISERS``), each a scalar of the alphas of both cells:

- ``beta-decay``: lambda_t * sum over cells of mean_e logsumexp_k alpha_ek, lambda_t = 50 t / 100
  with t the 0-based epoch (beta-DARTS, SPEC 8.3: architect.py:55-59, 80-85).
- ``zero-one``: 10 * L01, L01 = -mean over every entry of both cells of (sigma(alpha) - 0.5)^2
  (FairDARTS, SPEC 8.4: separate_loss.py:6-17, train_search.py:29, 81).
- ``dirichlet-kl``: 1e-3 * sum over edges of KL(Dir(beta) || Dir(1)) (DrNAS's 'kl' variant, SPEC
  8.1: search_model.py:57-72; its default 'l2' is the architecture optimizer's weight decay).

Perturbation of the weights of the weight step (``PERTURBATIONS``; SDARTS, SPEC 8.2): the weight
step runs on clip(softmax(alpha) + delta) instead of softmax(alpha), the architecture step stays
unperturbed; ``epsilon_t = 0.03 + 0.27 t / T``.

- ``random`` (SDARTS-RS): delta ~ U[-eps, eps] per entry (attacker/perturb.py:47-50).
- ``adversarial`` (SDARTS-ADV): from A0 + U[-eps, eps] (clipped), 7 steps of sign ascent of the
  training loss with step 2 eps / 7, each projected to A0 +- eps and clipped, network in eval mode;
  back to A0 if the final loss is below the loss at A0 (perturb.py:11-44, linf_sgd.py:72).

Selection of the final cell (``SELECTIONS``): ``argmax`` (DARTS's top-2 edges, argmax op), and
``threshold`` (FairDARTS's 'threshold_sparse', utils.py:143-189: per node the top-2 edges by their
largest sigma, each edge's argmax op kept only if its sigma >= 0.85), and ``perturbation``
(DARTS-PT: ``perturbation_selection.py``).
"""
import torch
import torch.nn.functional as F

from .gdas import gumbel_noise, hard_gumbel_softmax

SAMPLERS = ("softmax", "gumbel", "dirichlet", "sigmoid")
REGULARISERS = ("beta-decay", "zero-one", "dirichlet-kl")
PERTURBATIONS = ("random", "adversarial")
SELECTIONS = ("argmax", "threshold", "perturbation")

BETA_DECAY_MAX, BETA_DECAY_EPOCHS = 50.0, 100  # lambda_t = 50 t / 100: the authors hard-code 100
ZERO_ONE_WEIGHT = 10.0
DIRICHLET_KL_WEIGHT = 1e-3
ADVERSARIAL_STEPS = 7
FAIR_THRESHOLD = 0.85


def dirichlet_concentration(theta):
    """beta = ELU(theta) + 1 > 0 (theta = 0 is the uniform Dirichlet)."""
    return F.elu(theta) + 1


def arch_weights(sampler, alphas, tau=None, noise=None):
    """The [edges, ops] weights of one cell type. ``noise``: the Gumbel noise of ``gumbel`` (drawn
    when None); the Dirichlet draw uses torch's generator (seed it for a fixed sample)."""
    if sampler == "softmax":
        return F.softmax(alphas, dim=-1)
    if sampler == "sigmoid":
        return torch.sigmoid(alphas)
    if sampler == "dirichlet":
        return torch.distributions.Dirichlet(dirichlet_concentration(alphas)).rsample()
    if sampler == "gumbel":
        hard, index = hard_gumbel_softmax(alphas, tau, gumbel_noise(alphas) if noise is None else noise)
        return hard * torch.zeros_like(hard).scatter_(-1, index[:, None], 1.0)
    raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")


def masked(weights, mask):
    """w * m / sum(w * m) per row (the pruned operations weigh exactly 0; utils.py:176-184)."""
    kept = weights * mask
    return kept / kept.sum(dim=-1, keepdim=True)


def beta_decay_loss(alphas_list):
    """sum over cells of mean_e logsumexp_k alpha_ek (its gradient: softmax(alpha_e) / |E|)."""
    return sum(torch.logsumexp(alphas, dim=-1).mean() for alphas in alphas_list)


def beta_decay_weight(epoch):
    """lambda_t of beta-DARTS at 0-based epoch t."""
    return BETA_DECAY_MAX * epoch / BETA_DECAY_EPOCHS


def zero_one_loss(alphas_list):
    """-mean over every entry of (sigma(alpha) - 0.5)^2, the entries of all cells together."""
    return -(torch.sigmoid(torch.cat([a.flatten() for a in alphas_list])) - 0.5).pow(2).mean()


def dirichlet_kl(alphas_list):
    """sum over every edge of KL(Dir(ELU(theta) + 1) || Dir(1))."""
    total = 0
    for theta in alphas_list:
        beta = dirichlet_concentration(theta)
        prior = torch.distributions.Dirichlet(torch.ones_like(beta))
        total = total + torch.distributions.kl_divergence(torch.distributions.Dirichlet(beta), prior).sum()
    return total


def sdarts_epsilon(epoch, epochs):
    """epsilon_t = 0.03 + 0.27 t / T (SmoothDARTS train_search.py:169-171)."""
    return 0.03 + 0.27 * epoch / epochs


@torch.no_grad()
def simplex_clip(weights):
    """SDARTS's clip(): clamp to [0, 1]; a row left all zero gets 1 at its (unclamped) argmax;
    every row divided by its sum."""
    index = weights.argmax(dim=-1, keepdim=True)
    clipped = weights.clamp(0, 1)
    empty = clipped.sum(dim=-1, keepdim=True) == 0
    clipped = torch.where(empty, torch.zeros_like(clipped).scatter_(-1, index, 1.0), clipped)
    return clipped / clipped.sum(dim=-1, keepdim=True)


@torch.no_grad()
def random_smoothing(simplex, epsilon, noise=None):
    """clip(A + delta), delta ~ U[-eps, eps] (``noise``: uniform [0, 1) draws of A's shape, for tests)."""
    u = torch.rand_like(simplex) if noise is None else noise
    return simplex_clip(simplex + (2 * u - 1) * epsilon)


def adversarial(loss_at, simplex, epsilon, noise=None, steps=ADVERSARIAL_STEPS):
    """SDARTS-ADV's perturbed weights of every cell type. ``loss_at(weights)``: the training loss
    with the list of cell weights ``weights``; ``simplex``: the list A0; ``noise``: the uniform
    draws of the random start (list, for tests)."""
    noise = [None] * len(simplex) if noise is None else noise
    with torch.no_grad():
        loss_before = loss_at(simplex)
    current = [random_smoothing(a, epsilon, u) for a, u in zip(simplex, noise)]
    step = 2 * epsilon / steps
    for _ in range(steps):
        current = [a.detach().requires_grad_(True) for a in current]
        with torch.enable_grad():
            grads = torch.autograd.grad(loss_at(current), current)
        with torch.no_grad():
            current = [simplex_clip(a0 + (a + step * g.sign() - a0).clamp(-epsilon, epsilon))
                       for a, g, a0 in zip(current, grads, simplex)]
    with torch.no_grad():
        loss_after = loss_at(current)
        # Kept only where it raised the loss (one device-side choice, no host read).
        keep = loss_after >= loss_before
        return [torch.where(keep, a, a0) for a, a0 in zip(current, simplex)]


def threshold_cell(weights, steps, primitives, threshold=FAIR_THRESHOLD):
    """FairDARTS's sparse cell: [(op_name, node, state_index)], node i = 2 + i; per node the 2
    edges with the largest weight, each edge's argmax op, kept only if its weight >= threshold.
    A node may end with 0 or 1 inputs."""
    rows = torch.as_tensor(weights).detach().cpu().tolist()
    candidates = [k for k, name in enumerate(primitives) if name != "none"]
    cell, start = [], 0
    for node in range(steps):
        node_rows = rows[start : start + 2 + node]
        strongest = sorted(range(len(node_rows)), key=lambda j: -max(node_rows[j][k] for k in candidates))[:2]
        for j in strongest:
            best = max(candidates, key=lambda k: (node_rows[j][k], -k))
            if node_rows[j][best] >= threshold:
                cell.append((primitives[best], 2 + node, j))
        start += 2 + node
    return cell
