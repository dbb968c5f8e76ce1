"""Decoding: from continuous architecture weights to a discrete architecture (SPEC.md section 3).

Pure functions on arrays: they accept numpy arrays, torch tensors (any device, with or without
grad) or nested lists, and never touch a network.
"""
import math

from .nn.operations import PRIMITIVES


def num_edges(steps):
    """Edges of a cell with ``steps`` intermediate nodes: node i has 2 + i incoming edges."""
    return sum(2 + i for i in range(steps))


def _as_rows(weights):
    """A 2-D array-like as a list of lists of Python floats."""
    if hasattr(weights, "detach"):  # torch tensor
        weights = weights.detach().cpu()
    if hasattr(weights, "tolist"):  # torch tensor or numpy array
        weights = weights.tolist()
    try:
        rows = [[float(w) for w in row] for row in weights]
    except TypeError as error:
        raise ValueError(f"weights must be a 2-D array [edges, ops], got {type(weights).__name__}") from error
    return rows


def _cell_rows(weights, steps, primitives):
    """(rows as lists of floats, indices of the non-'none' primitives), checked for a cell of ``steps`` nodes."""
    rows = _as_rows(weights)
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if len(rows) != num_edges(steps) or any(len(row) != len(primitives) for row in rows):
        shape = [len(rows), len(rows[0]) if rows else 0]
        raise ValueError(
            f"weights must have shape [{num_edges(steps)}, {len(primitives)}] "
            f"(edges of {steps} steps, one column per primitive), got {shape}"
        )
    if any(math.isnan(w) for row in rows for w in row):
        raise ValueError("weights contain NaN: the architecture parameters diverged")
    # 'none' takes part in the softmax but never in the choice.
    candidates = [k for k, name in enumerate(primitives) if name != "none"]
    if not candidates:
        raise ValueError("primitives: at least one operation other than 'none' is needed to decode")
    return rows, candidates


def parse_cell(weights, steps, primitives=PRIMITIVES):
    """The discrete cell of the DARTS paper: for every node, its 2 strongest incoming edges with
    the best operation on each.

    Args:
        weights: softmax probabilities, shape [num_edges(steps), len(primitives)], edges in the
            flattened order (node 0 edges 0-1, node 1 edges 2-4, ...).
        steps: intermediate nodes of the cell.
        primitives: operation names, one per column.

    Returns:
        [(op_name, state_index)], two pairs per node, node by node, each node's pairs strongest
        first. An edge's strength is its largest non-'none' weight; ranking is stable (ties: lower
        state index first) and the op is the argmax over non-'none' ops (ties: lower op index).
    """
    primitives = tuple(primitives)
    rows, candidates = _cell_rows(weights, steps, primitives)
    gene = []
    start = 0
    for node in range(steps):
        node_rows = rows[start : start + 2 + node]
        strength = [max(row[k] for k in candidates) for row in node_rows]
        # sorted() is stable: equally strong edges keep the lower state index first.
        strongest = sorted(range(len(node_rows)), key=lambda j: -strength[j])[:2]
        for j in strongest:
            best = candidates[0]
            for k in candidates[1:]:
                if node_rows[j][k] > node_rows[j][best]:  # strict: ties keep the lower op index
                    best = k
            gene.append((primitives[best], j))
        start += 2 + node
    return gene


def parse_cell_pairs(weights, steps, primitives=PRIMITIVES):
    """GDAS's decoding as its authors' code runs it (AutoDL-Projects, the ``genotype`` of the DARTS-space
    GDAS supernet): for every node, the 2 largest weights among all (operation, input) pairs of its
    incoming edges, 'none' left out. Two operations of the same edge may both win, so a node may take
    the same input twice.

    Same arguments and result form as ``parse_cell``. Ranking is stable in the order the pairs are
    listed (input by input, operation by operation): ties keep the lower input, then the lower op index.
    """
    primitives = tuple(primitives)
    rows, candidates = _cell_rows(weights, steps, primitives)
    gene = []
    start = 0
    for node in range(steps):
        pairs = [(j, k) for j in range(2 + node) for k in candidates]
        strongest = sorted(pairs, key=lambda pair: -rows[start + pair[0]][pair[1]])[:2]
        gene += [(primitives[k], j) for j, k in strongest]
        start += 2 + node
    return gene


# ---------------------------------------------------------------------------------------------
# Auto-DeepLab network level (SPEC.md section 4): the trellis of levels and its Viterbi decoding.
# Levels 0..3 are the downsample rates 4, 8, 16, 32. Layer 0 is the stem, always at level 0;
# layers 1..L are the searched layers. betas[l, s, d] is the logit of leaving level s of layer l
# towards level s - 1 + d of layer l + 1 (d = 0: one level finer, 1: same level, 2: one coarser).

NUM_LEVELS = 4


def reachable_levels(layer):
    """Levels layer ``layer`` can be at: the stem (layer 0) is at level 0 and every layer moves at
    most one level, so layer l reaches levels 0..min(l, 3)."""
    if layer < 0:
        raise ValueError(f"layer must be >= 0 (0 is the stem), got {layer}")
    return range(min(layer, NUM_LEVELS - 1) + 1)


def transition_mask(layers):
    """[layers][4][3] booleans: True where the transition of ``betas[l][s][d]`` exists, i.e. level s
    is reachable at layer l and the target level s - 1 + d lies in 0..3."""
    return [
        [[s in reachable_levels(layer) and 0 <= s - 1 + d < NUM_LEVELS for d in range(3)] for s in range(NUM_LEVELS)]
        for layer in range(layers)
    ]


def _as_betas(betas):
    """betas as nested lists [L][4][3] of Python floats."""
    if hasattr(betas, "detach"):  # torch tensor
        betas = betas.detach().cpu()
    if hasattr(betas, "tolist"):  # torch tensor or numpy array
        betas = betas.tolist()
    try:
        rows = [[[float(b) for b in level] for level in layer] for layer in betas]
    except TypeError as error:
        raise ValueError(f"betas must be a 3-D array [layers, 4, 3], got {type(betas).__name__}") from error
    if not rows or any(len(layer) != NUM_LEVELS or any(len(level) != 3 for level in layer) for layer in rows):
        raise ValueError(f"betas must have shape [layers >= 1, {NUM_LEVELS}, 3], got a different shape")
    return rows


def transition_probabilities(betas, normalized=False):
    """The network-level transition matrix (paper Eq. 7) as nested lists [L][4][3].

    With ``normalized=False`` (the default) ``betas`` are logits: each reachable level's logits are
    softmaxed over its existing outgoing transitions only. With ``normalized=True`` they are already
    probabilities (for example a network's normalised betas) and are taken as they are. Either way,
    entries of transitions that do not exist are ignored (whatever they hold) and come back as 0.
    """
    rows = _as_betas(betas)
    mask = transition_mask(len(rows))
    probabilities = [[[0.0] * 3 for _ in range(NUM_LEVELS)] for _ in rows]
    for layer, (layer_rows, layer_mask) in enumerate(zip(rows, mask)):
        for s in range(NUM_LEVELS):
            valid = [d for d in range(3) if layer_mask[s][d]]
            values = [layer_rows[s][d] for d in valid]
            if not all(math.isfinite(v) for v in values):
                raise ValueError(f"betas[{layer}, {s}] holds NaN or inf: the architecture parameters diverged")
            if normalized:
                if any(v < 0 for v in values):
                    raise ValueError(f"betas[{layer}, {s}]: probabilities cannot be negative (normalized=True)")
                normalised = values
            elif values:
                # Shift by the maximum so exp never overflows.
                top = max(values)
                exps = [math.exp(v - top) for v in values]
                normalised = [e / sum(exps) for e in exps]
            else:
                normalised = []
            for d, p in zip(valid, normalised):
                probabilities[layer][s][d] = p
    return probabilities


def viterbi(betas, normalized=False):
    """The decoded network level: the path through the trellis with the largest product of
    transition probabilities (the paper decodes beta with the Viterbi algorithm).

    Args:
        betas: [L, 4, 3] logits, ``betas[l, s, d]`` for leaving level s of layer l (layer 0 is the
            stem, at level 0) towards level s - 1 + d. Logits of transitions that do not exist are
            ignored. Pass ``normalized=True`` when ``betas`` already holds the transition
            probabilities (see ``transition_probabilities``).

    Returns:
        The levels of layers 1..L (a list of L ints in 0..3), starting from the stem's level 0 and
        moving at most one level per layer. Among equally probable paths (equal in floating point)
        the one with the lower level at the first layer where they differ wins (lexicographically
        smallest), so the result is deterministic.
    """
    probabilities = transition_probabilities(betas, normalized)
    layers = len(probabilities)
    mask = transition_mask(layers)

    def log(p):
        return math.log(p) if p > 0 else -math.inf

    # best_tail[l][s]: best log-probability of going from level s of layer l to the last layer.
    # Computed backwards so the forward walk below can pick the lowest level among ties.
    best_tail = [[-math.inf] * NUM_LEVELS for _ in range(layers)] + [[0.0] * NUM_LEVELS]
    for layer in range(layers - 1, -1, -1):
        for s in reachable_levels(layer):
            scores = [log(probabilities[layer][s][d]) + best_tail[layer + 1][s - 1 + d]
                      for d in range(3) if mask[layer][s][d]]
            best_tail[layer][s] = max(scores)
    if best_tail[0][0] == -math.inf:
        raise ValueError("viterbi: every path has probability 0 (all transition probabilities on the way are 0)")

    path, level = [], 0
    for layer in range(layers):
        best_next, best_score = None, -math.inf
        for d in range(3):  # increasing target level: a strict '>' keeps the lowest among ties
            if mask[layer][level][d]:
                score = log(probabilities[layer][level][d]) + best_tail[layer + 1][level - 1 + d]
                if best_next is None or score > best_score:
                    best_next, best_score = level - 1 + d, score
        path.append(best_next)
        level = best_next
    return path
