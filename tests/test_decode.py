"""parse_cell (SPEC.md section 3) and the genotype's JSON and text forms."""
import numpy as np
import pytest
import torch

from fastdnas.darts import (
    DARTS_V2,
    Genotype,
    genotype_from_json,
    genotype_from_text,
    genotype_to_json,
    load_genotype,
    save_genotype,
)
from fastdnas.decode import num_edges, parse_cell
from fastdnas.nn import PRIMITIVES

OP = {name: k for k, name in enumerate(PRIMITIVES)}


def edge(rest=0.01, **weights):
    """One row of softmax weights: the named ops as given, every other op `rest`."""
    row = [rest] * len(PRIMITIVES)
    for name, w in weights.items():
        row[OP[name]] = w
    return row


# Two steps: node 0 has edges from states 0, 1; node 1 from states 0, 1, 2.
TWO_STEPS = [
    # node 0: 'none' dominates state 0, yet only the non-'none' ops count: state 1 is stronger.
    edge(none=0.9, sep_conv_3x3=0.05),
    edge(max_pool_3x3=0.3),
    # node 1: states 0 and 2 tie at 0.4 (lower state first); state 0 ties two ops (lower op first);
    # state 1 is 'none'-dominant and loses although its 'none' is the largest weight of the node.
    edge(sep_conv_3x3=0.4, dil_conv_3x3=0.4),
    edge(none=0.95, rest=0.007),
    edge(skip_connect=0.4),
]
TWO_STEPS_GENE = [("max_pool_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 0), ("skip_connect", 2)]


def test_parse_cell_known_answer():
    assert parse_cell(TWO_STEPS, steps=2) == TWO_STEPS_GENE


def test_parse_cell_orders_a_node_strongest_first():
    weights = [edge(avg_pool_3x3=0.2), edge(dil_conv_5x5=0.6)]
    assert parse_cell(weights, steps=1) == [("dil_conv_5x5", 1), ("avg_pool_3x3", 0)]


def test_parse_cell_accepts_numpy_and_torch():
    expected = parse_cell(TWO_STEPS, steps=2)
    assert parse_cell(np.array(TWO_STEPS), steps=2) == expected
    assert parse_cell(np.array(TWO_STEPS, dtype=np.float32), steps=2) == expected
    assert parse_cell(torch.tensor(TWO_STEPS, requires_grad=True), steps=2) == expected


def test_parse_cell_with_other_primitives():
    primitives = ("skip_connect", "none", "sep_conv_3x3")  # 'none' anywhere, or not at all
    weights = [[0.2, 0.7, 0.1], [0.1, 0.1, 0.8]]
    assert parse_cell(weights, 1, primitives) == [("sep_conv_3x3", 1), ("skip_connect", 0)]
    assert parse_cell(weights, 1, ("a_pool", "b_conv", "c_conv")) == [("c_conv", 1), ("b_conv", 0)]


def independent_parse(weights, steps):
    """The same rule written with numpy: lexsort on (state, -strength); argmax takes the first maximum."""
    masked = np.array(weights, dtype=np.float64)
    masked[:, OP["none"]] = -np.inf
    gene, start = [], 0
    for node in range(steps):
        block = masked[start : start + 2 + node]
        order = np.lexsort((np.arange(len(block)), -block.max(axis=1)))[:2]
        gene += [(PRIMITIVES[int(np.argmax(block[j]))], int(j)) for j in order]
        start += 2 + node
    return gene


@pytest.mark.parametrize("seed", range(20))
def test_parse_cell_matches_an_independent_implementation(seed):
    rng = np.random.default_rng(seed)
    # Coarse values make ties between edges and between ops frequent.
    logits = rng.integers(0, 4, size=(num_edges(4), len(PRIMITIVES))).astype(np.float64)
    weights = torch.softmax(torch.from_numpy(logits), dim=-1).numpy()
    assert parse_cell(weights, 4) == independent_parse(weights, 4)


def test_parse_cell_rejects_bad_input():
    with pytest.raises(ValueError, match=r"shape \[5, 8\]"):
        parse_cell(np.ones((14, 8)), steps=2)
    with pytest.raises(ValueError, match=r"shape \[5, 8\]"):
        parse_cell(np.ones((5, 7)), steps=2)
    with pytest.raises(ValueError, match="2-D"):
        parse_cell(np.ones(5), steps=2)
    nan = np.array(TWO_STEPS)
    nan[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        parse_cell(nan, steps=2)
    with pytest.raises(ValueError, match="other than 'none'"):
        parse_cell([[1.0], [1.0]], 1, ("none",))


DARTS_V2_AS_PUBLISHED = (
    "Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1), "
    "('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), ('dil_conv_3x3', 2)], "
    "normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), "
    "('max_pool_3x3', 1), ('max_pool_3x3', 0), ('skip_connect', 2), ('skip_connect', 2), ('max_pool_3x3', 1)], "
    "reduce_concat=[2, 3, 4, 5])"
)
SEARCH_LOG_LINE = (
    "Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('skip_connect', 0), ('sep_conv_3x3', 1), "
    "('skip_connect', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('skip_connect', 2)], "
    "normal_concat=range(2, 6), reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), "
    "('max_pool_3x3', 0), ('max_pool_3x3', 0), ('skip_connect', 2), ('skip_connect', 2), ('avg_pool_3x3', 0)], "
    "reduce_concat=range(2, 6))"
)


def test_genotype_prints_as_the_original():
    assert repr(DARTS_V2) == DARTS_V2_AS_PUBLISHED
    assert repr(genotype_from_text(SEARCH_LOG_LINE)) == SEARCH_LOG_LINE


def test_darts_v2_round_trips_through_json(tmp_path):
    assert genotype_from_json(genotype_to_json(DARTS_V2)) == DARTS_V2
    path = tmp_path / "genotype.json"
    save_genotype(DARTS_V2, path)
    assert load_genotype(path) == DARTS_V2
    assert all(isinstance(pair, tuple) for pair in load_genotype(path).normal)


def test_range_concat_comes_back_from_json_as_a_list():
    searched = genotype_from_text(SEARCH_LOG_LINE)
    loaded = genotype_from_json(genotype_to_json(searched))
    assert loaded == searched._replace(normal_concat=[2, 3, 4, 5], reduce_concat=[2, 3, 4, 5])


def test_text_form_round_trips(tmp_path):
    assert genotype_from_text(DARTS_V2_AS_PUBLISHED) == DARTS_V2
    searched = genotype_from_text(SEARCH_LOG_LINE)
    assert searched.normal_concat == range(2, 6)
    assert genotype_from_text(repr(searched)) == searched
    path = tmp_path / "genotype.txt"
    path.write_text(SEARCH_LOG_LINE + "\n")
    assert load_genotype(path) == searched


@pytest.mark.parametrize(
    "text",
    [
        "__import__('os').system('true')",
        "Genotype(normal=[], normal_concat=[], reduce=[])",
        "Genotype(normal=[('sep_conv_3x3', 0)], normal_concat=open('x'), reduce=[], reduce_concat=[])",
        "Genotype(normal=[('sep_conv_3x3', '0')], normal_concat=[2], reduce=[], reduce_concat=[2])",
        "Genotype(normal=[], normal_concat=[2], reduce=[], reduce_concat=[2], extra=1)",
        "not python at all (",
    ],
)
def test_genotype_from_text_rejects_anything_else(text):
    with pytest.raises(ValueError):
        genotype_from_text(text)


def test_genotype_from_json_rejects_bad_fields():
    with pytest.raises(ValueError, match="fields"):
        genotype_from_json('{"normal": []}')
    with pytest.raises(ValueError, match="pairs"):
        genotype_from_json('{"normal": [["sep_conv_3x3"]], "normal_concat": [2], "reduce": [], "reduce_concat": [2]}')


def test_genotype_is_the_original_namedtuple():
    assert Genotype._fields == ("normal", "normal_concat", "reduce", "reduce_concat")
    assert Genotype.__name__ == "Genotype"
