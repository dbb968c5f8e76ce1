"""Pictures of a search: each cell as a DAG, the softmax alpha weights over the epochs, the Auto-DeepLab trellis.

Matplotlib's object API (Figure + savefig, Agg) is used without pyplot, so nothing global changes
and no display or graphviz is needed.
"""
import math

import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

INPUT_COLOR, NODE_COLOR, OUTPUT_COLOR = "#b7e4c7", "#bde0fe", "#ffe8a3"


def cell_layout(steps):
    """Node name -> (x, y): the two inputs on the left, the intermediate nodes in a row, the output right."""
    positions = {"c_{k-2}": (0.0, 2.0), "c_{k-1}": (0.0, -2.0)}
    for i in range(steps):
        positions[str(i)] = (2.2 + 2.2 * i, 0.0)
    positions["c_{k}"] = (2.2 + 2.2 * steps + 1.2, 0.0)
    return positions


def state_name(index):
    return {0: "c_{k-2}", 1: "c_{k-1}"}.get(index, str(index - 2))


# Where along an edge its label may sit (fraction of the way to the target), most preferred first.
LABEL_POSITIONS = (0.5, 0.42, 0.58, 0.35, 0.65, 0.28, 0.72, 0.22, 0.78)
EDGE_SAMPLES = 48  # points per edge for the test of whether another edge runs through a label


def arc_point(start, end, rad, t):
    """The point at ``t`` on matplotlib's arc3 curve from start to end, and the curve's angle there (degrees,
    turned to read left to right)."""
    (x0, y0), (x1, y1) = start, end
    cx, cy = (x0 + x1) / 2 + rad * (y1 - y0), (y0 + y1) / 2 - rad * (x1 - x0)  # the control point
    x = (1 - t) ** 2 * x0 + 2 * t * (1 - t) * cx + t**2 * x1
    y = (1 - t) ** 2 * y0 + 2 * t * (1 - t) * cy + t**2 * y1
    angle = math.degrees(math.atan2((1 - t) * (cy - y0) + t * (y1 - cy), (1 - t) * (cx - x0) + t * (x1 - cx)))
    return x, y, angle - 180 if angle > 90 else angle + 180 if angle < -90 else angle


def overlap_area(box, others):
    return sum(max(0.0, min(box.x1, o.x1) - max(box.x0, o.x0)) * max(0.0, min(box.y1, o.y1) - max(box.y0, o.y0))
               for o in others)


def points_inside(box, points):
    return sum(box.x0 <= x <= box.x1 and box.y0 <= y <= box.y1 for x, y in points)


def plot_cell(pairs, concat, path, title=None):
    """Draw one cell of a genotype: ``pairs`` are its (op_name, state_index) pairs, two per node.

    Each op label sits on its edge, rotated along it, at the first of ``LABEL_POSITIONS`` where it
    covers no node, no label placed before it and no other edge (else where it covers least, an
    edge running through it counting most): where edges meet at a node, their labels stay apart."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    steps = len(pairs) // 2
    positions = cell_layout(steps)
    figure = Figure(figsize=(2.4 + 2.2 * steps, 4.6))
    renderer = FigureCanvasAgg(figure).get_renderer()
    ax = figure.add_subplot()
    xs, ys = zip(*positions.values())
    ax.set_xlim(min(xs) - 0.8, max(xs) + 0.8)
    ax.set_ylim(min(ys) - 1.2, max(ys) + 1.2)
    ax.set_aspect("equal")  # so the label angles match the drawn edges
    ax.axis("off")
    if title:
        ax.set_title(title)
    occupied = []  # display boxes of the nodes and of the labels placed so far
    for name, (x, y) in positions.items():
        color = INPUT_COLOR if name.startswith("c_{k-") else OUTPUT_COLOR if name == "c_{k}" else NODE_COLOR
        label = f"${name}$" if name.startswith("c_") else name
        node = ax.text(x, y, label, fontsize=10, ha="center", va="center", zorder=3,
                       bbox=dict(boxstyle="round,pad=0.4", fc=color, ec="black"))
        occupied.append(node)
    figure.tight_layout()  # before measuring: it moves the axes
    occupied = [node.get_window_extent(renderer).expanded(1.15, 1.3) for node in occupied]
    edges = [(state_name(index), str(k // 2), op) for k, (op, index) in enumerate(pairs)]
    edges += [(state_name(i), "c_{k}", None) for i in concat]
    curves = []  # (start, end, rad, display points of the drawn part) of every edge
    drawn = set()
    for source, target, op in edges:
        (x0, y0), (x1, y1) = positions[source], positions[target]
        # Edges along the row of nodes would run through the nodes between: bend them (ops up, output
        # down), the longer ones more, so that two arcs into one node part.
        skips_nodes = y0 == y1 and abs(x1 - x0) > 2.5
        rad = (0.3 if op is None else -0.2 - 0.03 * abs(x1 - x0)) if skips_nodes else 0.0
        if (source, target) in drawn:  # a node taking one input twice (GDAS's authors' decoding): bend apart
            rad += 0.4
        drawn.add((source, target))
        ax.annotate("", xy=(x1, y1), xytext=(x0, y0),
                    arrowprops=dict(arrowstyle="-|>", color="gray" if op is None else "black", lw=1.0,
                                    shrinkA=16, shrinkB=16, connectionstyle=f"arc3,rad={rad}"))
        samples = [arc_point((x0, y0), (x1, y1), rad, t)[:2] for t in
                   (0.08 + 0.84 * i / (EDGE_SAMPLES - 1) for i in range(EDGE_SAMPLES))]
        curves.append(((x0, y0), (x1, y1), rad, ax.transData.transform(samples)))
    for index, (_, _, op) in enumerate(edges):
        if op is None:
            continue
        start, end, rad, _ = curves[index]
        others = [point for other, curve in enumerate(curves) if other != index for point in curve[3]]
        best = None
        for t in LABEL_POSITIONS:
            x, y, angle = arc_point(start, end, rad, t)
            text = ax.text(x, y, op, fontsize=7, ha="center", va="center", rotation=angle, rotation_mode="anchor",
                           zorder=4, bbox=dict(boxstyle="round,pad=0.1", fc="white", ec="none", alpha=0.85))
            box = text.get_window_extent(renderer).expanded(1.3, 1.5)  # a margin between labels
            # An edge through the label hides the label's text: each point of it costs a fifth of the box.
            cost = overlap_area(box, occupied) + points_inside(box, others) * box.width * box.height / 5
            if best is None or cost < best[0]:
                if best is not None:
                    best[1].remove()
                best = (cost, text, box)
            else:
                text.remove()
            if cost == 0:
                break
        occupied.append(best[2])
    figure.savefig(path, dpi=120)


def plot_genotype(genotype, folder):
    """normal.png and reduce.png in ``folder``; returns their paths."""
    import os

    paths = []
    for kind in ("normal", "reduce"):
        path = os.path.join(folder, f"{kind}.png")
        plot_cell(getattr(genotype, kind), getattr(genotype, f"{kind}_concat"), path, title=f"{kind} cell")
        paths.append(path)
    return paths


def edge_names(num_edges):
    """'i<-j' (node i from state j) for the DARTS edge order, when ``num_edges`` fits it."""
    names, node = [], 0
    while len(names) < num_edges:
        names += [f"{node} <- {state_name(j)}" for j in range(2 + node)]
        node += 1
    return names[:num_edges] if len(names) == num_edges else [f"edge {e}" for e in range(num_edges)]


def plot_alpha_history(alpha_history, primitives, path, cell_names=("normal", "reduce"), columns=7,
                       edge_labels=None):
    """One subplot per edge of each cell: softmax(alpha) of every op over the epochs.

    ``alpha_history`` is a list (one entry per epoch) of the architecture tensors [edges, ops];
    ``edge_labels`` names the edges (default: those of a DARTS cell).
    """
    epochs = list(range(1, len(alpha_history) + 1))
    weights = [torch.stack([torch.softmax(epoch[c].float(), dim=-1) for epoch in alpha_history])
               for c in range(len(cell_names))]  # per cell: [epochs, edges, ops]
    rows_per_cell = [-(-w.shape[1] // columns) for w in weights]
    figure = Figure(figsize=(2.3 * columns, 1.9 * sum(rows_per_cell) + 0.8))
    # Fixed margins: tight_layout would cost a second full draw of every subplot.
    grid = figure.add_gridspec(sum(rows_per_cell), columns, left=0.04, right=0.99, top=0.96, bottom=0.12,
                               wspace=0.25, hspace=0.45)
    # One y-scale for every panel, so panels compare at a glance, fitted to the weights (they
    # often stay within a few hundredths of each other); the dashed line is the uniform weight
    # 1/K every op starts from: ops above it are winning their edge.
    uniform = 1.0 / len(primitives)
    low = min(uniform, min(w.min().item() for w in weights))
    high = max(uniform, max(w.max().item() for w in weights))
    margin = max(0.08 * (high - low), 1e-3)
    low, high = max(0.0, low - margin), min(1.0, high + margin)
    row = 0
    lines = []
    for name, cell_weights, rows in zip(cell_names, weights, rows_per_cell):
        for edge, edge_name in enumerate(edge_labels or edge_names(cell_weights.shape[1])):
            ax = figure.add_subplot(grid[row + edge // columns, edge % columns])
            lines = [ax.plot(epochs, cell_weights[:, edge, k], marker="." if len(epochs) < 20 else None, lw=1)[0]
                     for k in range(cell_weights.shape[2])]
            uniform_line = ax.axhline(uniform, color="gray", ls="--", lw=0.8)
            ax.set_ylim(low, high)
            ax.set_title(f"{name}: {edge_name}", fontsize=9)
            ax.tick_params(labelsize=8)
            ax.xaxis.set_major_locator(MaxNLocator(nbins=4, integer=True))
            ax.yaxis.set_major_locator(MaxNLocator(nbins=4))
            if edge % columns:
                ax.tick_params(labelleft=False)
        row += rows
    figure.legend(lines + [uniform_line], list(primitives) + [f"uniform 1/{len(primitives)}"], loc="lower center",
                  ncol=len(primitives) + 1, fontsize=9)
    figure.supxlabel("epoch", fontsize=9, y=0.06)
    figure.supylabel("softmax(alpha): weight of each op on the edge", fontsize=9, x=0.005)
    figure.savefig(path, dpi=100)


def plot_trellis(probabilities, path, out_path, title=None):
    """The Auto-DeepLab network level: every transition of the trellis drawn with a width and
    colour by its probability, the decoded path on top in red.

    ``probabilities``: [L, 4, 3] normalised betas (``SearchNetwork.normalized_betas()``; entry
    [l, s, d] leads from level s of layer l to level s - 1 + d of layer l + 1; layer 0 is the
    stem); ``path``: the decoded levels of layers 1..L.
    """
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    from .decode import NUM_LEVELS, reachable_levels, transition_mask

    probabilities = torch.as_tensor(probabilities, dtype=torch.float64).detach().cpu()
    layers = probabilities.shape[0]
    mask = transition_mask(layers)
    cmap, norm = colormaps["Blues"], Normalize(0.0, 1.0)
    figure = Figure(figsize=(1.6 + 0.75 * (layers + 1), 3.8))
    ax = figure.add_subplot()
    for layer in range(layers):
        for s in reachable_levels(layer):
            for d in range(3):
                if mask[layer][s][d]:
                    p = probabilities[layer, s, d].item()
                    ax.plot([layer, layer + 1], [s, s - 1 + d], color=cmap(norm(0.15 + 0.85 * p)),
                            lw=0.5 + 4.5 * p, solid_capstyle="round", zorder=1)
    levels = [0] + list(path)
    ax.plot(range(layers + 1), levels, color="#d62828", lw=2.2, zorder=2, label="decoded path")
    for layer in range(layers):  # the chosen transitions' probabilities
        d = levels[layer + 1] - levels[layer] + 1
        ax.text(layer + 0.5, (levels[layer] + levels[layer + 1]) / 2 - 0.12,
                f"{probabilities[layer, levels[layer], d].item():.2f}", fontsize=6.5, ha="center", color="#d62828",
                zorder=4, bbox=dict(boxstyle="round,pad=0.1", fc="white", ec="none", alpha=0.8))
    for layer in range(layers + 1):
        for s in reachable_levels(layer):
            on_path = levels[layer] == s
            ax.scatter([layer], [s], s=60 if on_path else 30, zorder=3, edgecolors="black", linewidths=0.6,
                       color="#ffb703" if on_path else "white")
    ax.set_xticks(range(layers + 1), ["stem"] + [str(layer) for layer in range(1, layers + 1)], fontsize=8)
    ax.set_yticks(range(NUM_LEVELS), [f"1/{4 * 2**s}" for s in range(NUM_LEVELS)], fontsize=8)
    ax.set_ylim(NUM_LEVELS - 0.5, -0.5)  # finest level at the top
    ax.set_xlim(-0.4, layers + 0.4)
    ax.set_xlabel("layer", fontsize=9)
    ax.set_ylabel("spatial resolution", fontsize=9)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.legend(loc="lower left", fontsize=7, frameon=False)
    figure.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, fraction=0.04, pad=0.02).set_label(
        "transition probability", fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(out_path, dpi=120)
    return out_path
