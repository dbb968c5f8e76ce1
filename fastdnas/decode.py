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
    rows = _as_rows(weights)
    primitives = tuple(primitives)
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
