"""The NAS-Bench-201 (NATS-Bench topology) cell space: operations, edges, the benchmark's
genotype string and the cell index.

A cell has nodes 0..3; node i sums one edge from every earlier node j; node 3 is the output.
The six edges, in the benchmark's order (the rows of the architecture parameters and the
order of the genotype string): 1<-0, 2<-0, 2<-1, 3<-0, 3<-1, 3<-2. Each edge picks one of five
operations. The genotype string writes node by node ``|op~j|`` for every incoming edge, nodes
joined by ``+``::

    |nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|
"""
import re

NB201_PRIMITIVES = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
NUM_NODES = 4
# (to, from) of every edge, in the benchmark's order (node by node, then by the earlier node).
EDGES = tuple((i, j) for i in range(1, NUM_NODES) for j in range(i))
NUM_EDGES = len(EDGES)  # 6
NUM_CELLS = len(NB201_PRIMITIVES) ** NUM_EDGES  # 15,625

_NODE = re.compile(r"\|([^|~]+)~(\d+)")


def genotype_string(ops):
    """The benchmark's string of a cell given its 6 operations (names or indices into
    NB201_PRIMITIVES) in edge order."""
    names = _op_names(ops, "ops")
    nodes, e = [], 0
    for i in range(1, NUM_NODES):
        nodes.append("|" + "|".join(f"{names[e + j]}~{j}" for j in range(i)) + "|")
        e += i
    return "+".join(nodes)


def parse_genotype_string(text):
    """The 6 operation names (edge order) of a benchmark genotype string; ValueError naming what is wrong."""
    if not isinstance(text, str):
        raise TypeError(f"genotype string must be a str, got {type(text).__name__}")
    nodes = text.strip().split("+")
    if len(nodes) != NUM_NODES - 1:
        raise ValueError(f"genotype string {text!r}: expected {NUM_NODES - 1} nodes joined by '+', got {len(nodes)}")
    ops = []
    for i, node in enumerate(nodes, start=1):
        items = _NODE.findall(node)
        if len(items) != i or node != "|" + "|".join(f"{op}~{j}" for op, j in items) + "|":
            raise ValueError(f"genotype string {text!r}: node {i} must read "
                             f"'|{'|'.join(f'OP~{j}' for j in range(i))}|', got {node!r}")
        for j, (op, source) in enumerate(items):
            if int(source) != j:
                raise ValueError(f"genotype string {text!r}: node {i}'s edge {j + 1} must come from node {j}, "
                                 f"got ~{source}")
            if op not in NB201_PRIMITIVES:
                raise ValueError(f"genotype string {text!r}: unknown operation {op!r}; known: {list(NB201_PRIMITIVES)}")
            ops.append(op)
    return ops


def cell_index(ops):
    """The position of a cell in the space's own enumeration (0..15,624): the edges' operation
    indices read as a base-5 number, edge 1<-0 the most significant digit, which is the order in
    which the authors' code generates the space (``CellStructure.gen_all``). The benchmark files
    list the cells in another order: their index comes from the file (``Benchmark.index``)."""
    index = 0
    for name in _op_names(ops, "ops"):
        index = index * len(NB201_PRIMITIVES) + NB201_PRIMITIVES.index(name)
    return index


def cell_from_index(index):
    """The 6 operation names of the cell at ``index`` of the space's enumeration (``cell_index``'s inverse)."""
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < NUM_CELLS:
        raise ValueError(f"index must be an integer in [0, {NUM_CELLS}), got {index!r}")
    digits = []
    for _ in range(NUM_EDGES):
        index, digit = divmod(index, len(NB201_PRIMITIVES))
        digits.append(NB201_PRIMITIVES[digit])
    return digits[::-1]


def decode_argmax(alphas):
    """The cell the authors' NAS-Bench-201 code decodes for DARTS and GDAS: per edge the argmax of
    the raw architecture parameters [6, 5], 'none' included (ties: the lower operation index)."""
    if tuple(alphas.shape) != (NUM_EDGES, len(NB201_PRIMITIVES)):
        raise ValueError(f"alphas must have shape [{NUM_EDGES}, {len(NB201_PRIMITIVES)}], got {list(alphas.shape)}")
    return [NB201_PRIMITIVES[k] for k in alphas.detach().argmax(dim=-1).tolist()]


def _op_names(ops, what):
    ops = list(ops)
    if len(ops) != NUM_EDGES:
        raise ValueError(f"{what} must hold {NUM_EDGES} operations (one per edge), got {len(ops)}")
    names = []
    for op in ops:
        if isinstance(op, int) and not isinstance(op, bool):
            if not 0 <= op < len(NB201_PRIMITIVES):
                raise ValueError(f"{what}: operation index {op} is not in [0, {len(NB201_PRIMITIVES)})")
            op = NB201_PRIMITIVES[op]
        if op not in NB201_PRIMITIVES:
            raise ValueError(f"{what}: unknown operation {op!r}; known: {list(NB201_PRIMITIVES)}")
        names.append(op)
    return names
