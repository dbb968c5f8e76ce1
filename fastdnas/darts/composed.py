"""The DARTS supernet built from parts (``parts.py``): architecture weights, partial channels and
edge normalisation, a regulariser on the architecture loss, a perturbation of the weight step and
the selection rule, and the presets of the methods that combine them (``PRESETS``).

``ComposedNetwork`` with the softmax weights and nothing else is the DARTS ``SearchNetwork`` (same
parameters, same names, same outputs); with partial channels and edge normalisation it is
``PCDartsNetwork``. The cells are those classes' cells, so every backend ("fused", "fused_sum",
"reference") runs it. The search loop finds the parts through three hooks: ``arch_regulariser()``
(added to the loss of the architecture step), ``perturbed(loss_fn, inputs, targets)`` (a context
the weight step runs in) and ``set_search_epoch(epoch, epochs)`` (the schedules).
"""
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..decode import num_edges
from ..nn.operations import PRIMITIVES
from . import parts, progressive
from .pc_darts import PartialSearchCell, edge_normalisation
from .search_network import SearchCell, SearchNetwork

# The DARTS operations without 'none' (DrNAS genotypes.py:5-14, SDARTS s5 spaces.py:80-99,
# FairDARTS genotypes.py:8-16, DARTS-PT s5).
PRIMITIVES_NO_NONE = tuple(p for p in PRIMITIVES if p != "none")

# Every preset's parts on the DARTS space (SPEC 2, 5, 5b, 8.1-8.4); the optimizer settings are the
# command line's (fastdnas.cli.SEARCH_METHOD_DEFAULTS).
PRESETS = {
    "darts": dict(sampler="softmax"),
    "pc-darts": dict(sampler="softmax", partial_channels=4, edge_normalisation=True),
    "gdas": dict(sampler="gumbel"),
    "drnas": dict(sampler="dirichlet", partial_channels=6, primitives=PRIMITIVES_NO_NONE),
    "sdarts-rs": dict(sampler="softmax", perturbation="random", primitives=PRIMITIVES_NO_NONE),
    "sdarts-adv": dict(sampler="softmax", perturbation="adversarial", primitives=PRIMITIVES_NO_NONE),
    "beta-darts": dict(sampler="softmax", regulariser="beta-decay", primitives=PRIMITIVES_NO_NONE),
    "fair-darts": dict(sampler="sigmoid", regulariser="zero-one", selection="threshold", alpha_init="zeros",
                       primitives=PRIMITIVES_NO_NONE),
    "darts-pt": dict(sampler="softmax", selection="perturbation", primitives=PRIMITIVES_NO_NONE),
}


def check_parts(sampler="softmax", partial_channels=1, edge_normalisation=False, perturbation=None,
                regulariser=None, selection="argmax", alpha_init="randn"):
    """Raises ValueError, naming the argument, for a part or a combination the formulas do not allow."""
    for name, value, allowed in (("sampler", sampler, parts.SAMPLERS),
                                 ("perturbation", perturbation, (None,) + parts.PERTURBATIONS),
                                 ("regulariser", regulariser, (None,) + parts.REGULARISERS),
                                 ("selection", selection, parts.SELECTIONS),
                                 ("alpha_init", alpha_init, ("randn", "zeros"))):
        if value not in allowed:
            raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")
    if not isinstance(partial_channels, int) or partial_channels < 1:
        raise ValueError(f"partial_channels must be a positive integer, got {partial_channels!r}")
    if sampler == "gumbel" and (partial_channels > 1 or edge_normalisation):
        raise ValueError("sampler 'gumbel' runs one operation per edge: partial channels and edge normalisation "
                         "do not combine with it")
    if perturbation is not None and sampler != "softmax":
        raise ValueError(f"perturbation {perturbation!r} perturbs the softmax simplex of the weight step: it needs "
                         f"sampler 'softmax', not {sampler!r}")
    needs = {"beta-decay": ("softmax",), "zero-one": ("sigmoid",), "dirichlet-kl": ("dirichlet",)}
    if regulariser is not None and sampler not in needs[regulariser]:
        raise ValueError(f"regulariser {regulariser!r} is a formula of the {needs[regulariser][0]} weights, "
                         f"not of sampler {sampler!r}")
    if selection == "perturbation" and (sampler != "softmax" or partial_channels > 1 or edge_normalisation):
        raise ValueError("selection 'perturbation' (DARTS-PT) projects the softmax weights of the DARTS supernet: it "
                         f"needs sampler 'softmax' without partial channels or edge normalisation")
    if selection == "threshold" and sampler != "sigmoid":
        raise ValueError("selection 'threshold' compares independent sigmoid weights with 0.85: it needs "
                         f"sampler 'sigmoid', not {sampler!r}")


class ComposedNetwork(SearchNetwork):
    """The DARTS supernet made of parts (module doc; ``check_parts`` for the arguments).

    ``forward(x, noise=None)``: ``noise`` (normal, reduce) gives the Gumbel noise of the ``gumbel``
    sampler (tests; drawn when None). Architecture parameters: the alphas (theta of DrNAS), and
    with edge normalisation the betas of PC-DARTS.

    ``stage_partial_channels``, ``stage_keep_ops`` (DrNAS's progressive schedule, ``progressive.py``;
    Dirichlet weights only): K and the operations kept per edge of each stage, the first K being
    ``partial_channels``. ``enter_stage(s)`` prunes and widens; ``mask_normal``, ``mask_reduce``
    (None before the first pruning) mask the Dirichlet draw and the decoding softmax.
    """

    def __init__(self, C=16, num_classes=10, layers=8, steps=4, multiplier=4, stem_multiplier=3,
                 backend="fused", in_channels=3, primitives=PRIMITIVES, sampler="softmax", partial_channels=1,
                 edge_normalisation=False, perturbation=None, regulariser=None, selection="argmax",
                 alpha_init="randn", tau_max=10.0, tau_min=0.1, stage_partial_channels=None, stage_keep_ops=None):
        check_parts(sampler, partial_channels, edge_normalisation, perturbation, regulariser, selection, alpha_init)
        if not isinstance(C, int) or C % partial_channels:
            raise ValueError(f"partial_channels must divide C={C!r}, got {partial_channels!r}")
        self.progressive = None
        if stage_partial_channels is not None or stage_keep_ops is not None:
            if sampler != "dirichlet" or edge_normalisation:
                raise ValueError("stage_partial_channels: the progressive schedule is DrNAS's: it needs sampler "
                                 f"'dirichlet' without edge normalisation, not {sampler!r}")
            self.progressive = progressive.check_schedule(stage_partial_channels or (), stage_keep_ops or (), C,
                                                          len(primitives))
            if self.progressive.partial_channels[0] != partial_channels:
                raise ValueError(f"stage_partial_channels must start at partial_channels={partial_channels}, got "
                                 f"{list(stage_partial_channels)}")
        if sampler == "gumbel" and not 0 < tau_min <= tau_max:
            raise ValueError(f"need 0 < tau_min <= tau_max, got tau_min={tau_min!r}, tau_max={tau_max!r}")
        self.sampler, self.partial_channels, self.edge_normalised = sampler, partial_channels, edge_normalisation
        self.perturbation, self.regulariser, self.selection = perturbation, regulariser, selection
        super().__init__(C, num_classes, layers, steps, multiplier, stem_multiplier, backend, in_channels, primitives)
        if alpha_init == "zeros":  # FairDARTS
            with torch.no_grad():
                for alphas in (self.alphas_normal, self.alphas_reduce):
                    alphas.zero_()
        if edge_normalisation:
            self.betas_normal = nn.Parameter(1e-3 * torch.randn(num_edges(steps)))
            self.betas_reduce = nn.Parameter(1e-3 * torch.randn(num_edges(steps)))
        self.tau_max, self.tau_min = float(tau_max), float(tau_min)
        self.register_buffer("tau", torch.tensor(self.tau_max))
        self.epoch, self.epochs = 0, 1
        self.override = None  # the weights of the weight step while perturbed
        self.stage = 0
        self.register_buffer("mask_normal", None, persistent=False)  # the checkpoint keeps them: schedule_state
        self.register_buffer("mask_reduce", None, persistent=False)

    def make_cell(self, *args):
        if self.partial_channels > 1 or self.edge_normalised or self.progressive is not None:
            return PartialSearchCell(*args, partial_channels=self.partial_channels)
        return SearchCell(*args)

    def arch_parameters(self):
        extra = [self.betas_normal, self.betas_reduce] if self.edge_normalised else []
        return [self.alphas_normal, self.alphas_reduce] + extra

    def set_search_epoch(self, epoch, epochs):
        """The schedules: tau (gumbel), lambda_t (beta-decay), epsilon_t (perturbation)."""
        self.epoch, self.epochs = epoch, epochs
        fraction = epoch / (epochs - 1) if epochs > 1 else 0.0
        self.tau.fill_(self.tau_max - (self.tau_max - self.tau_min) * fraction)

    def sample_weights(self, noise=None):
        """(normal, reduce) [edges, ops] weights of this forward."""
        noise = (None, None) if noise is None else noise
        weights = tuple(parts.arch_weights(self.sampler, alphas, self.tau, n)
                        for alphas, n in zip((self.alphas_normal, self.alphas_reduce), noise, strict=True))
        return self.apply_masks(weights)

    def apply_masks(self, weights):
        """(normal, reduce) weights masked and renormalised after a pruning (as they are before one)."""
        if self.mask_normal is None:
            return weights
        return tuple(parts.masked(w, m) for w, m in zip(weights, (self.mask_normal, self.mask_reduce), strict=True))

    def enter_stage(self, stage, generator=None):
        """Stage ``stage`` of the progressive schedule from the one before: theta pruned to the stage's
        operations per edge (masked), the partial channels widened to its K; returns the widening
        records (``progressive.widen_momentum`` grows the weights' momentum buffers with them)."""
        if self.progressive is None or stage != self.stage + 1 or stage >= self.progressive.stages:
            raise ValueError(f"enter_stage: stage must be {self.stage + 1} (the next of a progressive schedule), "
                             f"got {stage!r}")
        keep = self.progressive.keep_ops[stage]
        self.mask_normal = progressive.prune(self.alphas_normal, keep, self.mask_normal)
        self.mask_reduce = progressive.prune(self.alphas_reduce, keep, self.mask_reduce)
        records = progressive.widen_network(self, self.progressive.partial_channels[stage], generator)
        self.stage = stage
        return records

    def schedule_state(self):
        """What a checkpoint needs besides the state dict: the stage and the masks."""
        masks = None if self.mask_normal is None else [self.mask_normal.cpu(), self.mask_reduce.cpu()]
        return {"stage": self.stage, "masks": masks}

    def load_schedule_state(self, state):
        """The stage and masks of ``schedule_state()``: a network of an earlier stage is first
        brought to that stage's shapes (the values come with the state dict loaded after)."""
        stage = state["stage"]
        if self.progressive is None or not isinstance(stage, int) or not self.stage <= stage < self.progressive.stages:
            raise ValueError(f"schedule state: stage must be an integer from {self.stage} to "
                             f"{(self.progressive.stages if self.progressive else 1) - 1}, got {stage!r}")
        while self.stage < stage:
            self.enter_stage(self.stage + 1, torch.Generator().manual_seed(0))
        masks = state["masks"]
        shape = self.alphas_normal.shape
        if (masks is None) != (stage == 0) or masks is not None and (
                not isinstance(masks, (list, tuple)) or len(masks) != 2
                or any(not isinstance(m, torch.Tensor) or m.shape != shape for m in masks)):
            raise ValueError(f"schedule state: masks must be None at stage 0, else two boolean tensors of shape "
                             f"{list(shape)}")
        if masks is not None:
            self.mask_normal, self.mask_reduce = (m.to(self.alphas_normal.device, torch.bool) for m in masks)

    def edge_weights(self):
        """(normal, reduce) [edges] weights of the edges: normalised betas, or ones (partial channels alone)."""
        if self.edge_normalised:
            return edge_normalisation(self.betas_normal, self.steps), edge_normalisation(self.betas_reduce, self.steps)
        ones = self.alphas_normal.new_ones(self.alphas_normal.shape[0])
        return ones, ones

    def forward(self, x, noise=None):
        weights = self.override if self.override is not None else self.sample_weights(noise)
        return self.forward_with(x, weights)

    def forward_with(self, x, weights):
        """Logits with the given (normal, reduce) weights."""
        partial = isinstance(self.cells[0], PartialSearchCell)
        edges = self.edge_weights() if partial else None
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            r = int(cell.reduction)
            extra = (edges[r],) if partial else ()
            s0, s1 = s1, cell(s0, s1, weights[r], *extra)
        return self.classifier(self.global_pooling(s1).flatten(1))

    def arch_regulariser(self):
        """The regulariser's term of the architecture loss (None without one)."""
        alphas = [self.alphas_normal, self.alphas_reduce]
        if self.regulariser == "beta-decay":
            return parts.beta_decay_weight(self.epoch) * parts.beta_decay_loss(alphas)
        if self.regulariser == "zero-one":
            return parts.ZERO_ONE_WEIGHT * parts.zero_one_loss(alphas)
        if self.regulariser == "dirichlet-kl":
            return parts.DIRICHLET_KL_WEIGHT * parts.dirichlet_kl(alphas)
        return None

    @contextmanager
    def perturbed(self, loss_fn, inputs, targets, noise=None):
        """Within it, forwards use the perturbed simplex weights (nothing without a perturbation).
        ``noise``: the uniform draws (normal, reduce) of the random start, for tests."""
        if self.perturbation is None:
            yield
            return
        epsilon = parts.sdarts_epsilon(self.epoch, self.epochs)
        with torch.no_grad():
            simplex = [F.softmax(a.detach(), dim=-1) for a in (self.alphas_normal, self.alphas_reduce)]
        if self.perturbation == "random":
            noise = (None, None) if noise is None else noise
            self.override = tuple(parts.random_smoothing(a, epsilon, u) for a, u in zip(simplex, noise))
        else:
            was_training = self.training
            self.eval()  # BatchNorm running statistics, as the authors' attack

            def loss_at(weights):
                self.override = tuple(weights)
                loss = loss_fn(self, inputs, targets)
                return loss[0] if isinstance(loss, (tuple, list)) else loss

            try:  # the attack's gradients reach the perturbed weights alone
                frozen = [p for p in self.parameters() if p.requires_grad]
                for p in frozen:
                    p.requires_grad_(False)
                try:
                    self.override = tuple(parts.adversarial(loss_at, simplex, epsilon, noise))
                finally:
                    for p in frozen:
                        p.requires_grad_(True)
            finally:
                self.train(was_training)
        try:
            yield
        finally:
            self.override = None

    def decode_weights(self):
        """The weights the cell is selected from: softmax(alpha) (DrNAS: of theta, SPEC 8.1), sigma(alpha)
        with independent sigmoids, times the normalised betas with edge normalisation."""
        if self.sampler == "sigmoid":
            normal, reduce = torch.sigmoid(self.alphas_normal.detach()), torch.sigmoid(self.alphas_reduce.detach())
        else:  # DrNAS after a pruning: the softmax over the kept operations (model_search.py:246-249)
            normal, reduce = self.apply_masks(super().decode_weights())
        if self.edge_normalised:
            normal_edges, reduce_edges = (b.detach() for b in self.edge_weights())
            normal, reduce = normal * normal_edges[:, None], reduce * reduce_edges[:, None]
        return normal, reduce

    def selected_cells(self):
        """{"normal": ..., "reduce": ...} of the selection rule: the genotype's pairs for argmax,
        FairDARTS's [(op, node, state)] for threshold (perturbation: ``PerturbationSelection``)."""
        if self.selection == "perturbation":
            raise ValueError("selection 'perturbation' needs its tuning phase: run PerturbationSelection(search)")
        if self.selection == "threshold":
            normal, reduce = self.decode_weights()
            return {"normal": parts.threshold_cell(normal, self.steps, self.primitives),
                    "reduce": parts.threshold_cell(reduce, self.steps, self.primitives)}
        genotype = self.genotype()
        return {"normal": list(genotype.normal), "reduce": list(genotype.reduce)}


def preset_network(method, overrides=None, **network):
    """A ``ComposedNetwork`` of ``method``'s parts (``PRESETS``), ``overrides`` replacing some of them."""
    if method not in PRESETS:
        raise ValueError(f"method must be one of {sorted(PRESETS)}, got {method!r}")
    return ComposedNetwork(**{**PRESETS[method], **(overrides or {}), **network})
