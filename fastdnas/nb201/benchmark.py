"""Scoring a NAS-Bench-201 cell by the benchmark's own tables.

Read through the benchmark's official packages, imported only here and only when asked:
``nats_bench`` (PyPI ``nats_bench``) for the NATS-Bench topology files, ``nas_201_api`` (PyPI
``nas-bench-201``) for the older NAS-Bench-201 ``.pth`` files, the only reader of that format.

- a folder (``NATS-tss-v1_0-3ffb9-simple``: ``meta.pickle.pbz2`` plus one file per cell): the
  lazy archive, ``fast_mode=True``; only the cells looked up are read, one small file each;
- a file ``*.pickle.pbz2`` (``NATS-tss-v1_0-3ffb9.pickle.pbz2``): every cell is loaded at once;
- a file ``*.pth`` (``NAS-Bench-201-v1_0-e61699.pth``, ``v1_1-096897.pth``): loaded at once
  by ``torch.load`` inside ``nas_201_api``.

The figures are those papers report: after 200 epochs of training (``hp="200"``), the mean over
the benchmark's training seeds (``is_random=False``); the packages' defaults (``hp="12"``,
``is_random=True``) would give one random seed's figure after 12 epochs instead.
"""
import os

# key -> (the benchmark's dataset name, the entry of get_more_info)
FIGURES = {
    "cifar10_valid": ("cifar10-valid", "valid-accuracy"),  # trained on the 25k train half, the valid half
    "cifar10_test": ("cifar10", "test-accuracy"),  # trained on all 50k, the test set
    "cifar100_valid": ("cifar100", "valid-accuracy"),
    "cifar100_test": ("cifar100", "test-accuracy"),
    "imagenet16_valid": ("ImageNet16-120", "valid-accuracy"),
    "imagenet16_test": ("ImageNet16-120", "test-accuracy"),
}
FIGURE_NAMES = {"cifar10_valid": "C10 valid", "cifar10_test": "C10 test", "cifar100_valid": "C100 valid",
                "cifar100_test": "C100 test", "imagenet16_valid": "IN16 valid", "imagenet16_test": "IN16 test"}
WHERE_TO_GET = ("the NATS-Bench topology archive NATS-tss-v1_0-3ffb9-simple (a folder; lazy: README, "
                "\"NAS-Bench-201\", says where to get it)")


class BenchmarkError(Exception):
    """A benchmark file that cannot be read, or a package that is missing: the message says what to do."""


class Benchmark:
    """``Benchmark(path)``: lookups of cells (genotype strings) in a benchmark file or folder.

    ``hp`` ("200") and ``is_random`` (False) are passed to ``get_more_info`` as they are.
    ``api`` may give an already created API object (tests)."""

    def __init__(self, path, hp="200", is_random=False, api=None):
        self.path, self.hp, self.is_random = path, str(hp), is_random
        self.api = api if api is not None else open_api(path)
        self._cache = {}

    def index(self, genotype):
        """The cell's index in the benchmark file (its own order of the 15,625 cells), -1 if absent."""
        return self.api.query_index_by_arch(genotype)

    def lookup(self, genotype):
        """{"index": i, "cifar10_valid": %, "cifar10_test": %, ...}: the cell's accuracies (in percent)."""
        if genotype not in self._cache:
            index = self.index(genotype)
            if index < 0:
                raise BenchmarkError(f"the cell {genotype} is not in the benchmark {self.path!r}")
            result = {"index": index}
            infos = {}
            for key, (dataset, entry) in FIGURES.items():
                if dataset not in infos:
                    try:
                        infos[dataset] = self.api.get_more_info(index, dataset, hp=self.hp, is_random=self.is_random)
                    except Exception as error:  # the packages raise ValueError, AssertionError, KeyError, ...
                        raise BenchmarkError(f"the benchmark {self.path!r} has no results for the cell {genotype} "
                                             f"on {dataset} ({type(error).__name__}: {str(error)[:200]})") from error
                value = infos[dataset].get(entry)
                result[key] = None if value is None else float(value)
            self._cache[genotype] = result
        return dict(self._cache[genotype])


def open_api(path):
    """The benchmark package's API object for ``path`` (see the module doc)."""
    if not os.path.exists(path):
        raise BenchmarkError(f"--benchmark {path!r}: no such file or folder (expected {WHERE_TO_GET})")
    if os.path.isfile(path) and path.endswith(".pth"):
        try:
            from nas_201_api import NASBench201API
        except ImportError as error:
            raise BenchmarkError(f"--benchmark {path!r} is a NAS-Bench-201 .pth file, which only the package "
                                 "nas-bench-201 reads: pip install nas-bench-201 (it loads the whole file into "
                                 f"memory; {WHERE_TO_GET} needs far less)") from error
        try:
            return NASBench201API(path, verbose=False)
        except Exception as error:  # the package's own errors are of many types
            raise BenchmarkError(f"--benchmark {path!r}: nas_201_api cannot read it ({type(error).__name__}: "
                                 f"{str(error)[:200]})") from error
    try:
        import nats_bench
    except ImportError as error:
        raise BenchmarkError("--benchmark needs the package nats_bench (the benchmark's official reader): "
                             "pip install nats_bench, or pip install 'fastdnas[nb201]'") from error
    fast_mode = os.path.isdir(path)
    if fast_mode and not os.path.isfile(os.path.join(path, "meta.pickle.pbz2")):
        raise BenchmarkError(f"--benchmark {path!r}: a folder must be the lazy NATS-Bench topology archive, with "
                             f"meta.pickle.pbz2 and one file per cell (expected {WHERE_TO_GET})")
    try:
        return nats_bench.create(path, "tss", fast_mode=fast_mode, verbose=False)
    except Exception as error:
        raise BenchmarkError(f"--benchmark {path!r}: nats_bench cannot read it as a topology benchmark "
                             f"({type(error).__name__}: {str(error)[:200]}); expected {WHERE_TO_GET}, or its "
                             "single-file form NATS-tss-v1_0-3ffb9.pickle.pbz2") from error


def format_figures(result):
    """'C10 valid 89.9 test 93.6 | C100 ... ' for the epoch line."""
    parts = []
    for dataset, label in (("cifar10", "C10"), ("cifar100", "C100"), ("imagenet16", "IN16")):
        valid, test = result.get(f"{dataset}_valid"), result.get(f"{dataset}_test")
        show = [f"{name} {value:.2f}" for name, value in (("valid", valid), ("test", test)) if value is not None]
        if show:
            parts.append(f"{label} {' '.join(show)}")
    return "; ".join(parts)
