"""The search methods on digits, end to end: per method and seed, ``fastdnas search darts --method M
--seed S`` then ``fastdnas train darts --genotype .../genotype.json`` at the defaults, timed (wall),
with the load average before each command; then the README's table.

    python -m benchmarks.method_runs --methods drnas sdarts-rs --seeds 2 3 4 --out runs/methods
    python -m benchmarks.method_runs --table-only --out runs/methods     # the table of what is there

Per run it writes ``OUT/M-sS/run.json`` (times, loads, the supernet's last train/val accuracy, the
share of parameter-free operations in the found cells, the retrained test accuracy).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

PARAMETER_FREE = ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect")


def load_average():
    return os.getloadavg()[0]


def timed(command):
    load = load_average()
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start, load


def parameter_free_share(genotype):
    """(normal, reduce): the share of the cell's chosen operations that have no parameters."""
    return tuple(sum(op in PARAMETER_FREE for op, _ in genotype[cell]) / len(genotype[cell])
                 for cell in ("normal", "reduce"))


def run_one(method, seed, out, threads):
    run_dir = os.path.join(out, f"{method}-s{seed}")
    fastdnas = [sys.executable, "-m", "fastdnas"]
    search_s, search_load = timed(fastdnas + ["search", "darts", "--method", method, "--seed", str(seed),
                                              "--threads", str(threads), "--out", run_dir])
    train_s, train_load = timed(fastdnas + ["train", "darts", "--genotype", os.path.join(run_dir, "genotype.json"),
                                            "--threads", str(threads), "--out", os.path.join(run_dir, "retrain")])
    record = {"method": method, "seed": seed, "search_s": search_s, "search_load": search_load,
              "train_s": train_s, "train_load": train_load}
    with open(os.path.join(run_dir, "run.json"), "w") as f:
        json.dump(record, f, indent=2)
    return record


def summarise(run_dir, record):
    with open(os.path.join(run_dir, "log.jsonl")) as f:
        last = [json.loads(line) for line in f][-1]
    with open(os.path.join(run_dir, "genotype.json")) as f:
        genotype = json.load(f)
    with open(os.path.join(run_dir, "retrain", "result.json")) as f:
        result = json.load(f)
    normal, reduce = parameter_free_share(genotype)
    return {**record, "train_acc": last["train_acc"], "val_acc": last["val_acc"], "free_normal": normal,
            "free_reduce": reduce, "test_acc": result["test_acc"]}


def mean_text(values, digits):
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def table(out):
    rows = {}
    for name in sorted(os.listdir(out)):
        path = os.path.join(out, name, "run.json")
        if os.path.exists(path):
            with open(path) as f:
                record = json.load(f)
            rows.setdefault(record["method"], []).append(summarise(os.path.join(out, name), record))
    lines = ["| method | seeds | search (wall) | supernet at the end (train / val acc) | parameter-free ops in the "
             "found cells (normal / reduce) | retraining (wall) | retrained test accuracy | load average |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for method, runs in rows.items():
        col = lambda key: [r[key] for r in runs]
        loads = col("search_load") + col("train_load")
        lines.append(f"| {method} | {', '.join(str(s) for s in col('seed'))} | {mean_text(col('search_s'), 0)} s | "
                     f"{mean_text(col('train_acc'), 3)} / {mean_text(col('val_acc'), 3)} | "
                     f"{mean_text(col('free_normal'), 2)} / {mean_text(col('free_reduce'), 2)} | "
                     f"{mean_text(col('train_s'), 0)} s | **{mean_text(col('test_acc'), 4)}** | "
                     f"{min(loads):.1f}-{max(loads):.1f} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["drnas", "sdarts-rs", "sdarts-adv", "beta-darts",
                                                          "fair-darts"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[2])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="runs/methods")
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args(argv)
    if not args.table_only:
        for seed in args.seeds:
            for method in args.methods:
                record = run_one(method, seed, args.out, args.threads)
                print(json.dumps(record), flush=True)
    print(table(args.out))


if __name__ == "__main__":
    main()
