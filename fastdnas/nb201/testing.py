"""Benchmark archives with made-up accuracies, in the exact format ``nats_bench`` reads (built with
its own classes and pickle writer): for tests, and for measuring lookups without the real file.

``write_archive(path, accuracies, lazy=True)``: ``accuracies`` maps genotype strings to
{figure key (benchmark.FIGURES): [accuracy per training seed]}; every cell of the space is listed
in the archive's meta data (in a shuffled order, as the real files list them in an order of their
own), only the given cells have results.
"""
import os
import random

from .space import NUM_CELLS, cell_from_index, genotype_string

SEEDS = (777, 888, 999)
# dataset -> the evaluation sets the benchmark keeps for it (get_more_info reads them)
EVAL_SETS = {"cifar10-valid": ("x-valid", "ori-test"), "cifar10": ("ori-test",),
             "cifar100": ("x-valid", "x-test", "ori-test"), "ImageNet16-120": ("x-valid", "x-test", "ori-test")}
# figure key -> (dataset, evaluation set)
FIGURE_SETS = {"cifar10_valid": ("cifar10-valid", "x-valid"), "cifar10_test": ("cifar10", "ori-test"),
               "cifar100_valid": ("cifar100", "x-valid"), "cifar100_test": ("cifar100", "x-test"),
               "imagenet16_valid": ("ImageNet16-120", "x-valid"), "imagenet16_test": ("ImageNet16-120", "x-test")}


def shuffled_cells(seed=0):
    """Every genotype string of the space in a fixed shuffled order (the archive's cell order)."""
    cells = [genotype_string(cell_from_index(i)) for i in range(NUM_CELLS)]
    random.Random(seed).shuffle(cells)
    return cells


def arch_results(index, arch_str, figures, epochs=200, seeds=SEEDS):
    """nats_bench's ArchResults of one cell: every dataset trained with every seed; the accuracy
    of the last epoch is the given one (other epochs and sets: distinct values from 10 to 20, as
    varied as real ones, so the archive takes the memory a real one would)."""
    from nats_bench.api_utils import ArchResults, ResultsCount

    results = ArchResults(index, arch_str)
    for dataset, sets in EVAL_SETS.items():
        for s, seed in enumerate(seeds):
            train = {e: 10.0 + (e + s / 7) / epochs * 10 for e in range(epochs)}
            result = ResultsCount(dataset, None, train, {e: 2.0 - v / 10 for e, v in train.items()}, 0.1, 1.0,
                                  {"arch_str": arch_str, "channel": 16, "num_cells": 5, "class_num": 10}, seed,
                                  epochs, None)
            accs, losses, times = {}, {}, {}
            for name in sets:
                final = next((figures[key][s] for key, where in FIGURE_SETS.items()
                              if where == (dataset, name) and key in figures), 10.0)
                for e in range(epochs):
                    key = f"{name}@{e}"
                    accs[key] = final if e == epochs - 1 else train[e] + 0.5
                    losses[key], times[key] = 2.0 - train[e] / 10, 0.5 + train[e] / 100
            result.update_eval(accs, losses, times)
            results.update(dataset, seed, result)
    return results


def write_archive(path, accuracies, lazy=True, epochs=(12, 200), order_seed=0):
    """Write the archive (a folder when ``lazy``, else one ``.pickle.pbz2`` file; ``path`` without
    the extension in that case); returns the path ``nats_bench.create`` takes."""
    from nats_bench.api_utils import pickle_save

    cells = shuffled_cells(order_seed)
    position = {arch: i for i, arch in enumerate(cells)}
    infos = {}
    for arch, figures in accuracies.items():
        index = position[arch]
        # The short schedule's figures are made 30 points lower, so a test sees which one it read.
        infos[index] = {str(hp): arch_results(index, arch, figures if hp == 200 else
                                              {k: [v - 30.0 for v in values] for k, values in figures.items()},
                                              hp).state_dict()
                        for hp in epochs}
    if lazy:
        os.makedirs(path, exist_ok=True)
        pickle_save({"meta_archs": cells}, os.path.join(path, "meta.pickle"))
        for index, hp_results in infos.items():
            pickle_save(hp_results, os.path.join(path, f"{index:06d}.pickle"))
        return path
    pickle_save({"meta_archs": cells, "arch2infos": infos, "evaluated_indexes": sorted(infos)}, path + ".pickle")
    return path + ".pickle.pbz2"
