"""`search nb201` / `score nb201` end to end on a tiny synthetic search, and the benchmark lookups
through nats_bench on archives written in its exact format (proved by nats_bench reading them)."""
import io
import json
import math
import os
import pickle

import numpy as np
import pytest
import torch

from fastdnas import cli
from fastdnas.nb201 import cell_from_index, cell_index, genotype_string, parse_genotype_string
from fastdnas.nb201.benchmark import FIGURES, Benchmark, BenchmarkError
from fastdnas.nb201.data import load_nb201_data
from fastdnas.nb201.testing import write_archive

import nats_bench  # scripts/setup.sh installs it (the test extra): without it these tests fail, never skip

TINY = ["--dataset", "synthetic", "--device", "cpu", "--threads", "1", "--epochs", "2"]
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def no_plots(monkeypatch):
    import fastdnas.nb201.runs
    import fastdnas.viz

    monkeypatch.setattr(fastdnas.viz, "plot_alpha_history", lambda *args, **kwargs: None)
    monkeypatch.setattr(fastdnas.nb201.runs, "plot_benchmark", lambda *args, **kwargs: None)


def figures(base):
    """Made-up accuracies per seed of the benchmark (777, 888, 999): base, base + 2, base + 4."""
    return {key: [base + k + 2 * s for s in range(3)] for k, key in enumerate(FIGURES)}


CELLS = [genotype_string(cell_from_index(i)) for i in (3, 4000, 15624)]


@pytest.mark.parametrize("lazy", [True, False])
def test_archive_is_read_by_nats_bench_and_looked_up(tmp_path, lazy):
    path = write_archive(str(tmp_path / "bench"), {c: figures(50.0 + 10 * i) for i, c in enumerate(CELLS)}, lazy=lazy)
    # nats_bench itself reads the file: the format is its own.
    api = nats_bench.create(path, "tss", fast_mode=lazy, verbose=False)
    assert len(api) == 15625
    index = api.query_index_by_arch(CELLS[1])
    assert index >= 0 and api.meta_archs[index] == CELLS[1]
    info = api.get_more_info(index, "cifar100", hp="200", is_random=False)
    assert info["valid-accuracy"] == pytest.approx(60.0 + 2 + 2)  # mean of 62, 64, 66
    benchmark = Benchmark(path)
    result = benchmark.lookup(CELLS[1])
    assert result["index"] == index != cell_index(cell_from_index(4000))  # the file's own order
    for k, key in enumerate(FIGURES):
        assert result[key] == pytest.approx(60.0 + k + 2)  # 200 epochs, the mean over the three seeds
    # The packages' defaults would give a 12-epoch figure of one seed instead (30 lower in this archive).
    short = Benchmark(path, hp="12", is_random=777).lookup(CELLS[1])
    assert short["cifar10_valid"] == pytest.approx(60.0 - 30)
    with pytest.raises(BenchmarkError, match="has no results for the cell"):  # listed, but no results here
        benchmark.lookup(genotype_string(cell_from_index(5)))


def run(argv, capsys):
    code = cli.main(argv)
    assert code == 0
    return capsys.readouterr().out


def epochs(folder):
    with open(os.path.join(folder, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_seeds_search_score_and_per_epoch_lookups(tmp_path, capsys, no_plots):
    out = tmp_path / "seeds"
    text = run(["search", "nb201", *TINY, "--method", "gdas", "--seeds", "5,6", "--out", str(out)], capsys)
    assert "score nb201" in text and (out / "summary.md").exists()
    records = {s: epochs(out / f"seed-{s}") for s in (5, 6)}
    found = sorted({r["genotype"] for rs in records.values() for r in rs})
    assert all(r["cell_index"] == cell_index(parse_genotype_string(r["genotype"])) for rs in records.values() for r in rs)
    bench = write_archive(str(tmp_path / "bench"), {c: figures(40.0 + i) for i, c in enumerate(found)})
    # Scored afterwards: every epoch of every seed, then the summary.
    text = run(["score", "nb201", str(out), "--benchmark", bench], capsys)
    summary = json.loads((out / "summary.json").read_text())
    finals = [found.index(records[s][-1]["genotype"]) for s in (5, 6)]
    c10 = [40.0 + i + 2 for i in finals]  # cifar10_valid: base + 0 + mean seed offset 2
    assert [row["benchmark"]["cifar10_valid"] for row in summary["seeds"]] == pytest.approx(c10)
    assert summary["stats"]["cifar10_valid"]["mean"] == pytest.approx(np.mean(c10))
    assert summary["stats"]["cifar10_valid"]["std"] == pytest.approx(np.std(c10))
    assert all("benchmark" in r for r in epochs(out / "seed-5"))
    assert "C10 valid" in (out / "summary.md").read_text()
    # The same seed again, scored while it searches: the same cells and log, bit for bit (times aside).
    again = tmp_path / "again"
    text = run(["search", "nb201", *TINY, "--method", "gdas", "--seed", "5", "--out", str(again), "--benchmark", bench],
               capsys)
    assert "| C10 valid" in text
    rerun = epochs(again)
    scored = epochs(out / "seed-5")
    for a, b in zip(rerun, scored):
        a.pop("time"), b.pop("time")
        assert a == b
    genotype = json.loads((again / "genotype.json").read_text())
    assert genotype["benchmark"] == rerun[-1]["benchmark"]


def test_second_order_darts_resume_equals_uninterrupted(tmp_path, capsys, monkeypatch, no_plots):
    from fastdnas.search import Search, load_checkpoint

    run(["search", "nb201", *TINY, "--unrolled", "--out", str(tmp_path / "straight")], capsys)
    original_run = Search.run
    monkeypatch.setattr(Search, "run", lambda self, until=None: original_run(self, until=1))  # "killed" after epoch 1
    run(["search", "nb201", *TINY, "--unrolled", "--out", str(tmp_path / "resumed")], capsys)
    monkeypatch.setattr(Search, "run", original_run)
    text = run(["search", "nb201", *TINY, "--unrolled", "--out", str(tmp_path / "resumed"), "--resume"], capsys)
    assert "resumed after epoch 1" in text
    straight = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")
    resumed = load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")
    assert torch.equal(straight["arch_parameters"][0], resumed["arch_parameters"][0])
    assert (tmp_path / "straight" / "genotype.txt").read_text() == (tmp_path / "resumed" / "genotype.txt").read_text()


def fails(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_bad_arguments_fail_clearly(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a command that wrongly ran would write its default --out here
    fails(capsys, ["search", "nb201", *TINY, "--benchmark", str(tmp_path / "nope"), "--out", str(tmp_path / "a")],
          "--benchmark")
    fails(capsys, ["search", "nb201", *TINY, "--seeds", "1,x"], "--seeds must be comma-separated integers")
    fails(capsys, ["search", "nb201", *TINY, "--seeds", "1,2", "--seed", "3"], "--seed and --seeds")
    fails(capsys, ["search", "nb201", *TINY, "--backend", "fast"], "invalid choice: 'fast'")
    fails(capsys, ["search", "nb201", *TINY, "--method", "gdas", "--unrolled"], "--unrolled does not apply")
    fails(capsys, ["search", "nb201", *TINY, "--tau-max", "3"], "apply to --method gdas only")
    fails(capsys, ["search", "nb201", "--dataset", "cifar10", "--data", str(tmp_path)], "CIFAR-10 not found")
    empty = tmp_path / "empty"
    empty.mkdir()
    fails(capsys, ["score", "nb201", str(tmp_path), "--benchmark", str(empty)], "meta.pickle.pbz2")


def test_seeds_under_torchrun_split_the_ranks_into_equal_groups():
    from fastdnas.cli.search import LinePrefix
    from fastdnas.nb201.runs import group_seeds, seed_groups

    # The largest divisor of the ranks that is at most the number of seeds (README, "Seeds").
    cases = {(1, 3): 1, (2, 2): 2, (4, 2): 2, (4, 3): 2, (3, 2): 1, (2, 5): 2, (8, 3): 2, (6, 4): 3, (4, 4): 4}
    assert {case: seed_groups(*case) for case in cases} == cases
    assert [group_seeds([777, 888, 999], 2, i) for i in range(2)] == [[777, 999], [888]]
    with pytest.raises(ValueError, match="world_size and seed_count must be >= 1"):
        seed_groups(0, 2)
    stream = io.StringIO()  # each group's lines carry its seed
    prefixed = LinePrefix(stream, "[seed 5] ")
    prefixed.write("a\nb")
    prefixed.write("c\n\nd\n")
    assert stream.getvalue() == "[seed 5] a\n[seed 5] bc\n[seed 5] \n[seed 5] d\n"


def test_cifar10_uses_the_authors_split_file(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), b"labels": [0, 1, 2, 3]}, f)
    split = {"train": ["int", [3, 0, 7, 12]], "valid": ["int", [1, 19, 5]]}
    (tmp_path / "cifar-split.txt").write_text(json.dumps(split))
    data = load_nb201_data("cifar10", str(tmp_path))
    train_all = torch.cat([data.train.images])
    assert torch.equal(data.search_train.images, train_all[[3, 0, 7, 12]])
    assert torch.equal(data.search_val.images, train_all[[1, 19, 5]])
    assert data.search_train.crop_padding == 4 and data.search_train.flip
    (tmp_path / "cifar-split.txt").write_text(json.dumps({"train": ["int", [1, 2]], "valid": ["int", [2, 3]]}))
    with pytest.raises(ValueError, match="overlap"):
        load_nb201_data("cifar10", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="--split-file"):
        load_nb201_data("cifar10", str(tmp_path), split_file=str(tmp_path / "missing.txt"))


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_search_runs(tmp_path, capsys, no_plots, amp):
    text = run(["search", "nb201", *TINY, "--epochs", "1", "--amp", amp, "--out", str(tmp_path / amp)], capsys)
    assert f"amp {amp}" in text
    record = epochs(tmp_path / amp)[0]
    assert math.isfinite(record["train_loss"]) and math.isfinite(record["val_loss"])


def test_cifar100_and_imagenet16_take_the_alphas_from_the_xvalid_half_of_the_test_set(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for name, n in (("train", 6), ("test", 8)):
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                         b"fine_labels": list(range(n))}, f)
    (tmp_path / "cifar100-test-split.txt").write_text(json.dumps({"xvalid": ["int", [5, 1]], "xtest": ["int", [0, 2]]}))
    data = load_nb201_data("cifar100", str(tmp_path))
    assert len(data.search_train) == 6 and torch.equal(data.search_val.images, data.test.images[[5, 1]])
    assert data.search_val.flip and data.search_val.crop_padding == 4
    imagenet = tmp_path / "ImageNet16"
    imagenet.mkdir()
    for name in [f"train_data_batch_{i}" for i in range(1, 11)] + ["val_data"]:
        with open(imagenet / name, "wb") as f:  # labels 1..1000: only 1..120 are kept, as 0..119
            pickle.dump({"data": rng.integers(0, 256, (3, 768), dtype=np.uint8), "labels": [1, 120, 121]}, f)
    (tmp_path / "imagenet-16-120-test-split.txt").write_text(json.dumps({"xvalid": ["int", [0]], "xtest": ["int", [1]]}))
    data = load_nb201_data("ImageNet16-120", str(tmp_path))
    assert len(data.search_train) == 20 and data.train.labels.max() == 119 and data.search_train.crop_padding == 2
    assert data.image_size == 16 and torch.equal(data.search_val.images, data.test.images[[0]])


def test_a_cell_without_results_is_named_and_the_search_goes_on(tmp_path, capsys, no_plots):
    # An archive whose meta data lists every cell but that holds results for one only (a cut file).
    absent = genotype_string(cell_from_index(7))
    bench = write_archive(str(tmp_path / "bench"), {absent: figures(50.0)})
    text = run(["search", "nb201", *TINY, "--out", str(tmp_path / "run"), "--benchmark", bench], capsys)
    records = epochs(tmp_path / "run")
    assert absent not in {r["genotype"] for r in records}  # cell 7: none x 4, skip_connect, nor_conv_1x1
    assert "| benchmark: the benchmark" in text and "has no results for the cell" in text
    assert all("benchmark_error" in r and "benchmark" not in r for r in records)
    assert "benchmark" not in json.loads((tmp_path / "run" / "genotype.json").read_text())
