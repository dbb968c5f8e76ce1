"""DARTS-PT's perturbation-based selection of the final cell (Wang et al., ICLR 2021; SPEC 8.5,
sota/cnn/projection.py:107-247) on a searched ``ComposedNetwork`` (softmax weights).

The supernet is fine-tuned (weights only: SGD, lr cosine 0.0025 -> 0.001 over the tuning epochs,
the architecture frozen) while the cell is decided step by step, at the start of every
``interval``-th tuning epoch, both cell types at each decision:

- operation decisions first, one per cell type per decision (a random undecided edge): for each
  operation o, the supernet's accuracy on the whole search-val half with o's weight on that edge
  zeroed (the other weights as they are, no renormalisation; decided edges one-hot; BatchNorm in
  training mode, no gradients); the edge becomes one-hot at the operation whose removal costs the
  most accuracy;
- then edge decisions, one per cell type per decision: a random node with more than two live
  inputs; repeatedly the live edge whose removal leaves the highest accuracy is removed (its row
  zeroed) until two remain.

With 14 edges and 3 such nodes that is 17 decisions: ``interval * 16 + 1`` tuning epochs (81 at the
authors' interval 5). The supernet runs with the projected weights through the network's
``override`` (the fused kernels, as any forward).
"""
import torch

from ..data.base import iterate_batches
from ..search.schedule import cosine_lr, set_lr


def projected(weights, ops, removed):
    """The [edges, ops] weights with decided edges one-hot (``ops[e] >= 0``) and removed edges zero."""
    decided = ops >= 0
    one_hot = torch.zeros_like(weights).scatter_(-1, ops.clamp_min(0)[:, None], 1.0)
    out = torch.where(decided[:, None], one_hot, weights)
    return torch.where(removed[:, None], torch.zeros_like(out), out)


class PerturbationSelection:
    """The selection phase of one ``Search`` (its model, weight optimizer and data).

    ``run()`` tunes and decides; then ``weights()`` gives the projected (normal, reduce) weights,
    from which ``genotype()`` decodes the cell (the decided op of each of the two kept edges).
    """

    def __init__(self, search, interval=5, lr=0.0025, lr_min=0.001, seed=0, log=print):
        if not isinstance(interval, int) or interval < 1:
            raise ValueError(f"interval must be a positive integer, got {interval!r}")
        self.search, self.model = search, search.model
        self.interval, self.lr, self.lr_min, self.log = interval, lr, lr_min, log
        edges = self.model.alphas_normal.shape[0]
        device = self.model.alphas_normal.device
        self.ops = [torch.full((edges,), -1, dtype=torch.long, device=device) for _ in range(2)]
        self.removed = [torch.zeros(edges, dtype=torch.bool, device=device) for _ in range(2)]
        self.generator = torch.Generator().manual_seed(seed)
        self.starts = [sum(2 + j for j in range(i)) for i in range(self.model.steps)]
        self.epochs = interval * (edges + self.model.steps - 1 - 1) + 1  # decisions at 0, interval, ...

    def weights(self):
        with torch.no_grad():
            soft = self.model.decode_weights()
        return tuple(projected(w, ops, removed) for w, ops, removed in zip(soft, self.ops, self.removed))

    @torch.no_grad()
    def accuracy(self, weights):
        """Accuracy on the search-val half with (normal, reduce) ``weights``, BatchNorm in training mode."""
        model, search = self.model, self.search
        model.train()
        correct = torch.zeros((), dtype=torch.long, device=search.device)
        count = 0
        model.override = weights
        try:
            for inputs, targets in search.prefetcher.prefetch(iterate_batches(search.val_data, search.rank_batch_size)):
                correct += (model(inputs).argmax(1) == targets).sum()
                count += targets.shape[0]
        finally:
            model.override = None
        return correct.item() / max(count, 1)

    def decide_op(self, cell):
        undecided = (self.ops[cell] < 0).nonzero().flatten().tolist()
        edge = undecided[int(torch.randint(len(undecided), (1,), generator=self.generator))]
        base = list(self.weights())
        scores = []
        for op in range(base[cell].shape[1]):
            trial = list(base)
            trial[cell] = base[cell].clone()
            trial[cell][edge, op] = 0.0
            scores.append(self.accuracy(tuple(trial)))
        best = min(range(len(scores)), key=lambda o: (scores[o], o))  # the removal that hurts most
        self.ops[cell][edge] = best
        return edge, best, scores

    def decide_edges(self, cell):
        live = lambda node: [self.starts[node] + j for j in range(2 + node)
                             if not self.removed[cell][self.starts[node] + j]]
        nodes = [node for node in range(self.model.steps) if len(live(node)) > 2]
        node = nodes[int(torch.randint(len(nodes), (1,), generator=self.generator))]
        while len(live(node)) > 2:
            scores = {}
            for edge in live(node):
                self.removed[cell][edge] = True
                scores[edge] = self.accuracy(self.weights())
                self.removed[cell][edge] = False
            worst = max(scores, key=lambda e: (scores[e], -e))  # its removal leaves the highest accuracy
            self.removed[cell][worst] = True
        return node, live(node)

    def decide(self, index):
        """Decision ``index`` (0-based) for both cell types: an op while edges are undecided, else edges."""
        for cell in (0, 1):
            if (self.ops[cell] < 0).any():
                edge, op, _ = self.decide_op(cell)
                self.log(f"  {'normal' if cell == 0 else 'reduce'} edge {edge}: {self.model.primitives[op]}")
            else:
                node, kept = self.decide_edges(cell)
                self.log(f"  {'normal' if cell == 0 else 'reduce'} node {node}: keeps edges {kept}")

    def run(self):
        search = self.search
        for p in self.model.arch_parameters():
            p.requires_grad_(False)
        try:
            for epoch in range(self.epochs):
                if epoch % self.interval == 0:
                    self.decide(epoch // self.interval)
                lr = cosine_lr(epoch, self.epochs, self.lr, self.lr_min)
                set_lr(search.weight_optimizer, lr)
                self.model.train()
                batches = iterate_batches(search.train_data, search.rank_batch_size,
                                          torch.Generator().manual_seed(int(self.generator.initial_seed()) + epoch),
                                          shuffle=True, drop_last=True)
                for inputs, targets in search.prefetcher.prefetch(batches):
                    self.model.override = self.weights()
                    try:
                        search.weight_step(inputs, targets)
                    finally:
                        self.model.override = None
                self.log(f"selection epoch {epoch + 1}/{self.epochs} lr {lr:.5f}")
        finally:
            for p in self.model.arch_parameters():
                p.requires_grad_(True)
        return self

    def genotype(self):
        from ..decode import parse_cell
        from .genotype import Genotype

        normal, reduce = (parse_cell(w, self.model.steps, self.model.primitives) for w in self.weights())
        concat = range(2 + self.model.steps - self.model.multiplier, self.model.steps + 2)
        return Genotype(normal=normal, normal_concat=concat, reduce=reduce, reduce_concat=concat)
