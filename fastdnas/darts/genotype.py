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


def save_genotype(genotype, path):
    """Writes the genotype as JSON."""
    with open(path, "w") as f:
        f.write(genotype_to_json(genotype, indent=2) + "\n")


def load_genotype(path):
    """Reads a genotype file: JSON, or the printed text form of the original code."""
    with open(path) as f:
        text = f.read()
    if text.lstrip().startswith("Genotype"):
        return genotype_from_text(text)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError("not a genotype file: expected the genotype.json a search writes (a JSON object with "
                         f"{', '.join(Genotype._fields)}) or its genotype.txt (Genotype(normal=[...], ...)); "
                         f"this file is neither (JSON: {error})") from error
    return genotype_from_dict(data)
