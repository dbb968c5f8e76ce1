"""Auto-DeepLab network-level decoding: viterbi equals brute force over every reachable path."""
import math

import numpy as np
import pytest
import torch

from fastdnas.autodeeplab import PAPER_PATH, normalized_betas
from fastdnas.decode import NUM_LEVELS, reachable_levels, transition_mask, transition_probabilities, viterbi


def all_paths(layers):
    """Every level sequence of layers 1..L from the stem's level 0, moving at most one level a layer."""
    paths = [[]]
    for _ in range(layers):
        paths = [path + [level] for path in paths
                 for level in range(NUM_LEVELS) if abs(level - (path[-1] if path else 0)) <= 1]
    return paths


def path_probability(probabilities, path):
    product, level = 1.0, 0
    for layer, target in enumerate(path):
        product *= probabilities[layer][level][target - level + 1]
        level = target
    return product


def brute_force(betas, normalized=False):
    """The most probable path; among equal ones the first in lexicographic order (strict '>')."""
    probabilities = transition_probabilities(betas, normalized)
    best, best_probability = None, -1.0
    for path in all_paths(len(probabilities)):  # generated in lexicographic order
        probability = path_probability(probabilities, path)
        if probability > best_probability:
            best, best_probability = path, probability
    return best, best_probability


def betas_favouring(path, strength=4.0, noise=0.1, seed=0):
    """Logits with ``strength`` added on every transition of ``path``, small noise elsewhere."""
    betas = noise * torch.randn(len(path), NUM_LEVELS, 3, generator=torch.Generator().manual_seed(seed))
    level = 0
    for layer, target in enumerate(path):
        betas[layer, level, target - level + 1] += strength
        level = target
    return betas


@pytest.mark.parametrize("layers", [1, 2, 3, 4, 5, 6, 8, 10])
def test_viterbi_equals_brute_force_on_random_betas(layers):
    generator = torch.Generator().manual_seed(layers)
    for trial in range(10):
        betas = (1 + trial) * torch.randn(layers, NUM_LEVELS, 3, generator=generator)
        path = viterbi(betas)
        expected, expected_probability = brute_force(betas)
        assert path == expected
        assert math.isclose(path_probability(transition_probabilities(betas), path), expected_probability,
                            rel_tol=1e-12)


def test_reproduces_the_papers_backbone():
    assert viterbi(betas_favouring(PAPER_PATH)) == list(PAPER_PATH)


def test_finds_the_global_best_where_greedy_fails():
    probabilities = torch.zeros(2, NUM_LEVELS, 3, dtype=torch.float64)
    probabilities[0, 0, 1:] = torch.tensor([0.6, 0.4])  # greedy takes level 0 first ...
    probabilities[1, 0, 1:] = torch.tensor([0.5, 0.5])  # ... and gets 0.3 at best,
    probabilities[1, 1] = torch.tensor([0.01, 0.98, 0.01])  # while [1, 1] has 0.392
    assert viterbi(probabilities, normalized=True) == [1, 1]


def test_ties_go_to_the_lower_level_at_the_first_layer_that_differs():
    # Every path equally probable: all zeros is the lexicographically smallest.
    for layers in (1, 3, 12):
        assert viterbi(0.5 * torch.ones(layers, NUM_LEVELS, 3), normalized=True) == [0] * layers
    # [0, 1] and [1, 0] tie with 0.45; lowest first means lowest at the first layer.
    probabilities = torch.zeros(2, NUM_LEVELS, 3, dtype=torch.float64)
    probabilities[0, 0, 1:] = torch.tensor([0.5, 0.5])
    probabilities[1, 0, 1:] = torch.tensor([0.1, 0.9])
    probabilities[1, 1] = torch.tensor([0.9, 0.05, 0.05])
    assert viterbi(probabilities, normalized=True) == [0, 1]
    assert brute_force(probabilities, normalized=True)[0] == [0, 1]


def test_logits_and_probabilities_give_the_same_path():
    torch.manual_seed(3)
    betas = 2 * torch.randn(12, NUM_LEVELS, 3, dtype=torch.float64)
    mask = torch.tensor(transition_mask(12))
    path = viterbi(betas)
    assert viterbi(normalized_betas(betas, mask), normalized=True) == path
    assert viterbi(transition_probabilities(betas), normalized=True) == path
    # The Python softmax and the network's agree.
    assert torch.allclose(torch.tensor(transition_probabilities(betas), dtype=torch.float64),
                          normalized_betas(betas, mask), rtol=0, atol=1e-15)


def test_missing_transitions_are_ignored():
    torch.manual_seed(4)
    betas = torch.randn(6, NUM_LEVELS, 3, dtype=torch.float64)
    missing = ~torch.tensor(transition_mask(6))
    path = viterbi(betas)
    probabilities = transition_probabilities(betas)
    for filler in (float("nan"), 1e6, -1e6):
        changed = betas.masked_fill(missing, filler)
        assert viterbi(changed) == path
        assert transition_probabilities(changed) == probabilities


def test_transition_probabilities_are_a_markov_matrix_per_layer():
    torch.manual_seed(5)
    probabilities = torch.tensor(transition_probabilities(torch.randn(5, NUM_LEVELS, 3)))
    mask = torch.tensor(transition_mask(5))
    assert (probabilities[~mask] == 0).all()
    for layer in range(5):
        for level in range(NUM_LEVELS):
            expected = 1.0 if level in reachable_levels(layer) else 0.0
            assert probabilities[layer, level].sum().item() == pytest.approx(expected, abs=1e-12)


def test_trellis_structure_helpers():
    assert [list(reachable_levels(layer)) for layer in range(6)] == [[0], [0, 1], [0, 1, 2], [0, 1, 2, 3],
                                                                     [0, 1, 2, 3], [0, 1, 2, 3]]
    mask = transition_mask(4)
    assert mask[0] == [[False, True, True], [False] * 3, [False] * 3, [False] * 3]  # the stem: stay or go down
    assert mask[3] == [[False, True, True], [True] * 3, [True] * 3, [True, True, False]]
    # The mask holds exactly the transitions that some path from the stem takes.
    used = [[[False] * 3 for _ in range(NUM_LEVELS)] for _ in range(4)]
    for path in all_paths(4):
        for layer, (source, target) in enumerate(zip([0] + path, path)):
            used[layer][source][target - source + 1] = True
    assert used == mask


def test_accepts_numpy_lists_and_tensors():
    betas = betas_favouring([1, 2, 2, 1])
    expected = [1, 2, 2, 1]
    assert viterbi(betas) == expected
    assert viterbi(betas.numpy()) == expected
    assert viterbi(betas.tolist()) == expected
    assert viterbi(betas.requires_grad_()) == expected
    assert viterbi(np.asarray(transition_probabilities(betas)), normalized=True) == expected


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="shape"):
        viterbi(torch.zeros(3, 3, 3))
    with pytest.raises(ValueError, match="shape"):
        viterbi(torch.zeros(0, NUM_LEVELS, 3))
    with pytest.raises(ValueError, match="3-D"):
        viterbi(torch.zeros(NUM_LEVELS))
    with pytest.raises(ValueError, match="NaN"):
        viterbi(torch.full((2, NUM_LEVELS, 3), float("nan")))
    with pytest.raises(ValueError, match="negative"):
        viterbi(-torch.ones(2, NUM_LEVELS, 3), normalized=True)
    with pytest.raises(ValueError, match="probability 0"):
        viterbi(torch.zeros(2, NUM_LEVELS, 3), normalized=True)
