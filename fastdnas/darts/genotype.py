"""The discrete DARTS architecture (genotype): the original namedtuple, its JSON form and its text form.

A genotype prints exactly as the original code prints it, for example
``Genotype(normal=[('sep_conv_3x3', 0), ...], normal_concat=range(2, 6), reduce=[...], reduce_concat=range(2, 6))``,
and that text (as found in logs of the original code) reads back with ``genotype_from_text``.
"""
import ast
import json
from collections import namedtuple

# Same type name and field order as the original code, so reprs and pickles look the same.
Genotype = namedtuple("Genotype", "normal normal_concat reduce reduce_concat")

# The cells published with the DARTS paper (first and second order search on CIFAR-10).
DARTS_V1 = Genotype(
    normal=[('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('skip_connect', 0), ('sep_conv_3x3', 1),
            ('skip_connect', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('skip_connect', 2)],
    normal_concat=[2, 3, 4, 5],
    reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 0),
            ('max_pool_3x3', 0), ('skip_connect', 2), ('skip_connect', 2), ('avg_pool_3x3', 0)],
    reduce_concat=[2, 3, 4, 5],
)
DARTS_V2 = Genotype(
    normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1),
            ('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), ('dil_conv_3x3', 2)],
    normal_concat=[2, 3, 4, 5],
    reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 1),
            ('max_pool_3x3', 0), ('skip_connect', 2), ('skip_connect', 2), ('max_pool_3x3', 1)],
    reduce_concat=[2, 3, 4, 5],
)


def _check_pairs(field, pairs):
    if not isinstance(pairs, (list, tuple)):
        raise ValueError(f"genotype {field}: expected a list of (op_name, state_index) pairs, got {pairs!r}")
    checked = []
    for pair in pairs:
        if (
            not isinstance(pair, (list, tuple))
            or len(pair) != 2
            or not isinstance(pair[0], str)
            or not isinstance(pair[1], int)
            or isinstance(pair[1], bool)
            or pair[1] < 0
        ):
            raise ValueError(f"genotype {field}: expected (op_name, state_index) pairs, got {pair!r}")
        checked.append((pair[0], pair[1]))
    return checked


def _check_concat(field, concat):
    if isinstance(concat, range):
        return concat
    if not isinstance(concat, (list, tuple)) or not all(
        isinstance(i, int) and not isinstance(i, bool) for i in concat
    ):
        raise ValueError(f"genotype {field}: expected a list of state indices, got {concat!r}")
    return list(concat)


def genotype_to_dict(genotype):
    """A JSON-ready dict; concat ranges become lists."""
    return {
        "normal": [[op, index] for op, index in genotype.normal],
        "normal_concat": list(genotype.normal_concat),
        "reduce": [[op, index] for op, index in genotype.reduce],
        "reduce_concat": list(genotype.reduce_concat),
    }


def genotype_from_dict(data):
    """The Genotype of ``genotype_to_dict``'s output, checked: pairs become tuples, concats lists."""
    if not isinstance(data, dict) or set(data) != set(Genotype._fields):
        found = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"a genotype needs exactly the fields {list(Genotype._fields)}, got {found}")
    return Genotype(
        normal=_check_pairs("normal", data["normal"]),
        normal_concat=_check_concat("normal_concat", data["normal_concat"]),
        reduce=_check_pairs("reduce", data["reduce"]),
        reduce_concat=_check_concat("reduce_concat", data["reduce_concat"]),
    )


def genotype_to_json(genotype, indent=None):
    return json.dumps(genotype_to_dict(genotype), indent=indent)


def genotype_from_json(text):
    return genotype_from_dict(json.loads(text))


def _literal(node, text):
    """A Python literal, also allowing range(a, b) as the original code writes concat."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "range":
        if node.keywords or not 1 <= len(node.args) <= 3:
            raise ValueError(f"not a genotype: unexpected range(...) in {text!r}")
        return range(*(ast.literal_eval(arg) for arg in node.args))
    return ast.literal_eval(node)


def genotype_from_text(text):
    """Parses the printed form ``Genotype(normal=[...], normal_concat=range(2, 6), ...)`` (no eval)."""
    try:
        call = ast.parse(text.strip(), mode="eval").body
    except SyntaxError as error:
        raise ValueError(f"not a genotype: {text!r}") from error
    if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "Genotype"):
        raise ValueError(f"not a genotype: expected Genotype(normal=..., ...), got {text!r}")
    if len(call.args) + len(call.keywords) != len(Genotype._fields) or any(k.arg is None for k in call.keywords):
        raise ValueError(f"not a genotype: expected the fields {list(Genotype._fields)} in {text!r}")
    fields = dict(zip(Genotype._fields, (_literal(arg, text) for arg in call.args)))
    for keyword in call.keywords:
        if keyword.arg in fields:
            raise ValueError(f"not a genotype: field {keyword.arg!r} given twice in {text!r}")
        fields[keyword.arg] = _literal(keyword.value, text)
    return genotype_from_dict(fields)


NNI_SIDES = ("normal", "reduce")


def genotype_to_nni(genotype, input_as_list=False):
    """NNI's exported form of a DARTS-space architecture: ``{'normal/op_2_0': 'sep_conv_3x3',
    'normal/input_2_0': 0, ...}``, node n (2, 3, ...) taking its k-th (0, 1) op from state
    ``input_n_k``. ``input_as_list``: inputs as one-element lists, as NNI 2.x exports them.
    NNI's DARTS space concatenates every node, so the concats must be all nodes."""
    arch = {}
    for side in NNI_SIDES:
        pairs = getattr(genotype, side)
        if len(pairs) % 2:
            raise ValueError(f"genotype.{side}: NNI's form needs two (op, input) pairs per node, got {len(pairs)} pairs")
        nodes = list(range(2, 2 + len(pairs) // 2))
        if list(getattr(genotype, side + "_concat")) != nodes:
            raise ValueError(f"genotype.{side}_concat must be every node {nodes} for NNI's form (its DARTS space "
                             f"concatenates them all), got {list(getattr(genotype, side + '_concat'))}")
        for k, (op, index) in enumerate(pairs):
            node, slot = 2 + k // 2, k % 2
            arch[f"{side}/op_{node}_{slot}"] = op
            arch[f"{side}/input_{node}_{slot}"] = [index] if input_as_list else index
    return arch


def genotype_from_nni(arch):
    """The Genotype of NNI's exported dict (inputs as ints or one-element lists; other keys, such
    as NNI 3's ``width`` and ``depth``, are the network's, not the cell's, and are ignored)."""
    if not isinstance(arch, dict):
        raise ValueError(f"an NNI architecture is a dict, got {type(arch).__name__}")
    fields = {}
    for side in NNI_SIDES:
        ops = {key for key in arch if key.startswith(f"{side}/op_")}
        pairs = []
        for node in range(2, 2 + len(ops) // 2):
            for slot in (0, 1):
                op_key, input_key = f"{side}/op_{node}_{slot}", f"{side}/input_{node}_{slot}"
                if op_key not in arch or input_key not in arch:
                    raise ValueError(f"not an NNI DARTS architecture: {op_key!r} or {input_key!r} is missing")
                index = arch[input_key]
                if isinstance(index, (list, tuple)):
                    if len(index) != 1:
                        raise ValueError(f"{input_key}: expected one chosen input, got {index!r}")
                    index = index[0]
                pairs.append((arch[op_key], index))
        if not pairs or len(pairs) != len(ops):
            raise ValueError(f"not an NNI DARTS architecture: its {side!r} ops {sorted(ops)} are not "
                             f"{side}/op_N_0 and {side}/op_N_1 for the nodes N = 2, 3, ...")
        fields[side] = pairs
        fields[side + "_concat"] = list(range(2, 2 + len(pairs) // 2))
    return genotype_from_dict(fields)


def save_genotype(genotype, path):
    """Writes the genotype as JSON."""
    with open(path, "w") as f:
        f.write(genotype_to_json(genotype, indent=2) + "\n")


def genotype_from_any_text(text, what="genotype"):
    """A genotype in any of the three forms: the original ``Genotype(...)`` text, fastdnas's JSON,
    or NNI's exported dict as JSON."""
    if text.lstrip().startswith("Genotype"):
        return genotype_from_text(text)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"not a {what}: expected the genotype.json a search writes (a JSON object with "
                         f"{', '.join(Genotype._fields)}), its genotype.txt (Genotype(normal=[...], ...)) or NNI's "
                         f"exported dict ({{\"normal/op_2_0\": ...}}); this is none of them (JSON: {error})") from error
    if isinstance(data, dict) and any(key.startswith(("normal/", "reduce/")) for key in data):
        return genotype_from_nni(data)
    return genotype_from_dict(data)


def load_genotype(path):
    """Reads a genotype file: fastdnas's JSON, the printed text form of the original code, or NNI's
    exported dict (JSON)."""
    with open(path) as f:
        return genotype_from_any_text(f.read(), "genotype file")
