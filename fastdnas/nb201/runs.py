"""`fastdnas search nb201` and `fastdnas score nb201`: what the NAS-Bench-201 space adds to the
shared search command (fastdnas.cli), the per-seed runs and their summary, and scoring a run's
epochs by the benchmark.

Every epoch record of ``log.jsonl`` gets ``genotype`` (the benchmark's string), ``cell_index``
(the space's own enumeration) and, with ``--benchmark``, ``benchmark``: the cell's index in the
benchmark file and its accuracies after 200 epochs, mean over the benchmark's seeds.
"""
import copy
import json
import math
import os

from .benchmark import FIGURE_NAMES, FIGURES, Benchmark, BenchmarkError, format_figures
from .space import cell_index

SUMMARY_KEYS = list(FIGURES)


def search_config_options(settings):
    """The authors' step for the method: DARTS first order and GDAS take the weight step first,
    second-order DARTS the architecture step first; Nesterov SGD; clip over weights and alphas."""
    return {"weight_step_first": not settings["unrolled"], "nesterov": True, "clip_with_arch": True}


def open_benchmark(settings):
    """The Benchmark of --benchmark, or None."""
    if not settings.get("benchmark"):
        return None
    return Benchmark(settings["benchmark"])


def nb201_search(settings, data, search_run, benchmark=None):
    """The SearchRun of the NAS-Bench-201 space (``search_run``: the cli's SearchRun class)."""
    from ..viz import plot_alpha_history
    from .network import NB201GdasNetwork, NB201Network

    options = {"C": settings["init_channels"], "N": settings["layers"], "num_classes": data.num_classes,
               "in_channels": data.in_channels, "backend": settings["backend"],
               "track_running_stats": settings["track_running_stats"]}
    if settings["method"] == "gdas":
        model = NB201GdasNetwork(**options, tau_max=settings["tau_max"], tau_min=settings["tau_min"])
    else:
        model = NB201Network(**options)

    def describe(model):
        genotype = model.genotype()
        record = {"genotype": genotype, "cell_index": cell_index(model.cell_ops())}
        if settings["method"] == "gdas":
            record["tau"] = float(model.tau)
        if benchmark is not None:
            try:
                record["benchmark"] = benchmark.lookup(genotype)
            except BenchmarkError as error:  # a file without this cell: said on the epoch's line, the search goes on
                record["benchmark_error"] = str(error)
        return record

    def epoch_note(record):
        if "benchmark_error" in record:
            return f" | benchmark: {record['benchmark_error']}"
        return f" | {format_figures(record['benchmark'])}" if "benchmark" in record else ""

    def finish(model, search, out):
        genotype = model.genotype()
        result = {"genotype": genotype, "ops": model.cell_ops(), "cell_index": cell_index(model.cell_ops()),
                  "method": settings["method"], "seed": settings["seed"]}
        if benchmark is not None and "benchmark" in search.history["epochs"][-1]:
            result["benchmark"] = search.history["epochs"][-1]["benchmark"]
        with open(os.path.join(out, "genotype.json"), "w") as f:
            json.dump(result, f, indent=2)
        with open(os.path.join(out, "genotype.txt"), "w") as f:
            f.write(genotype + "\n")
        plot_alpha_history(search.history["alphas"], model.primitives, os.path.join(out, "alphas.png"),
                           cell_names=("cell",), columns=3, edge_labels=EDGE_LABELS)
        written = ["genotype.json", "genotype.txt", "alphas.png"]
        print(f"cell: {genotype}")
        if benchmark is not None:
            plot_benchmark(search.history["epochs"], os.path.join(out, "benchmark.png"))
            written.append("benchmark.png")
            if "benchmark" in result:
                print(f"benchmark (200 epochs, mean of its seeds): {format_figures(result['benchmark'])}")
        else:
            print(f"to score it by the benchmark: fastdnas score nb201 {out} --benchmark PATH")
        return written

    return search_run(model, describe=describe, finish=finish, epoch_note=epoch_note)


EDGE_LABELS = ["1<-0", "2<-0", "2<-1", "3<-0", "3<-1", "3<-2"]


def plot_benchmark(records, path):
    """The benchmark accuracy of each epoch's decoded cell, one line per figure."""
    from matplotlib.figure import Figure

    epochs = [r["epoch"] + 1 for r in records if "benchmark" in r]
    figure = Figure(figsize=(7, 4))
    ax = figure.add_subplot(1, 1, 1)
    for key in SUMMARY_KEYS:
        values = [r["benchmark"].get(key) for r in records if "benchmark" in r]
        if any(v is not None for v in values):
            ax.plot(epochs, [math.nan if v is None else v for v in values], marker=".", label=FIGURE_NAMES[key])
    ax.set_xlabel("search epoch")
    ax.set_ylabel("benchmark accuracy of the decoded cell (%)")
    ax.set_title("NAS-Bench-201: 200-epoch accuracy, mean of the benchmark's seeds", fontsize=10)
    ax.legend(fontsize=8, ncol=3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def read_log(run_dir):
    path = os.path.join(run_dir, "log.jsonl")
    try:
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError as error:
        raise BenchmarkError(f"{run_dir!r} holds no log.jsonl: not the --out of a `fastdnas search nb201` run") from error


def score_run(run_dir, benchmark):
    """Look up every epoch's cell of a finished (or interrupted) run: the records of log.jsonl get
    ``benchmark``; genotype.json too; benchmark.png is drawn. Returns the last record."""
    records = read_log(run_dir)
    if not records or "genotype" not in records[-1]:
        raise BenchmarkError(f"{run_dir!r}: log.jsonl holds no epoch of a `fastdnas search nb201` run")
    for record in records:
        record["benchmark"] = benchmark.lookup(record["genotype"])
    with open(os.path.join(run_dir, "log.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    genotype_path = os.path.join(run_dir, "genotype.json")
    if os.path.exists(genotype_path):
        with open(genotype_path) as f:
            result = json.load(f)
        result["benchmark"] = benchmark.lookup(result["genotype"])
        with open(genotype_path, "w") as f:
            json.dump(result, f, indent=2)
    plot_benchmark(records, os.path.join(run_dir, "benchmark.png"))
    return records[-1]


def seed_dirs(out, seeds):
    return [os.path.join(out, f"seed-{seed}") for seed in seeds]


def parse_seeds(text):
    """'777,888,999' -> [777, 888, 999]; ValueError naming --seeds."""
    try:
        seeds = [int(s) for s in str(text).split(",") if s.strip()]
    except ValueError as error:
        raise ValueError(f"--seeds must be comma-separated integers such as 777,888,999, got {text!r}") from error
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds must name at least one seed, each once, got {text!r}")
    return seeds


def seed_groups(world_size, seed_count):
    """How many groups ``search nb201 --seeds`` cuts ``world_size`` ranks into, one seed at a time
    per group: the largest divisor of ``world_size`` that is at most ``seed_count``. So every rank
    always works and the groups are the same size (each seed runs on world_size / groups ranks);
    with seed_count >= world_size each rank runs seeds alone, and where only 1 divides (3 ranks, 2
    seeds) all ranks run each seed in turn."""
    if world_size < 1 or seed_count < 1:
        raise ValueError(f"world_size and seed_count must be >= 1, got {world_size} and {seed_count}")
    return max(g for g in range(1, min(world_size, seed_count) + 1) if world_size % g == 0)


def group_seeds(seeds, groups, index):
    """The seeds group ``index`` of ``groups`` runs, one after another: every groups-th from its own."""
    return seeds[index::groups]


def seed_row(seed, records):
    """The summary's row of a seed's run (its ``log.jsonl`` records)."""
    last = records[-1]
    return {"seed": seed, "genotype": last["genotype"], "cell_index": last["cell_index"], "epochs": len(records),
            "search_time": sum(r["time"] for r in records), "benchmark": last.get("benchmark")}


def summarise(out, seeds, rows=None):
    """summary.json and summary.md from the seed runs under ``out`` (or from their ``rows``, in the
    order of ``seeds``): per seed the cell, its benchmark accuracies (where scored) and the search
    time; then the mean and the standard deviation over seeds (population, ddof 0, of the seeds that
    have the figure)."""
    if rows is None:
        rows = [seed_row(seed, read_log(folder)) for seed, folder in zip(seeds, seed_dirs(out, seeds))]
    stats = {}
    for key in SUMMARY_KEYS + ["search_time"]:
        values = [row["search_time"] if key == "search_time" else (row["benchmark"] or {}).get(key) for row in rows]
        values = [v for v in values if v is not None]
        if values:
            mean = sum(values) / len(values)
            stats[key] = {"mean": mean, "std": math.sqrt(sum((v - mean) ** 2 for v in values) / len(values)),
                          "seeds": len(values)}
    summary = {"seeds": rows, "stats": stats}
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    table = summary_table(summary)
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write(table + "\n")
    return summary, table


def summary_table(summary):
    """A Markdown table: a row per seed, then mean +- std."""
    scored = [k for k in SUMMARY_KEYS if k in summary["stats"]]
    header = ["seed", "cell"] + [FIGURE_NAMES[k] for k in scored] + ["search (s)"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for row in summary["seeds"]:
        figures = [f"{row['benchmark'][k]:.2f}" if row["benchmark"] and row["benchmark"].get(k) is not None else "-"
                   for k in scored]
        cell = row["genotype"].replace("|", "\\|")  # a Markdown table cell: the bars escaped
        lines.append("| " + " | ".join([str(row["seed"]), f"`{cell}`"] + figures
                                       + [f"{row['search_time']:.1f}"]) + " |")
    stats = summary["stats"]
    cells = [f"{stats[k]['mean']:.2f} +- {stats[k]['std']:.2f}" for k in scored]
    cells.append(f"{stats['search_time']['mean']:.1f} +- {stats['search_time']['std']:.1f}")
    lines.append("| mean +- std | | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def seed_args(args, seed, out):
    """The namespace of one seed's run: --seed and --out set, --seeds removed."""
    one = copy.copy(args)
    delattr(one, "seeds")
    one.seed, one.out = seed, out
    return one
