"""The score command: score nb201 looks up a finished search's cells in the benchmark."""
import os

from .common import UsageError


def add_score_command(commands):
    score = commands.add_parser("score", help="score a finished search by a benchmark's tables",
                                description="Score a finished search by a benchmark's tables.")
    spaces = score.add_subparsers(dest="space", required=True, metavar="SPACE")
    leaf = spaces.add_parser("nb201", help="look up every epoch's cell of a `search nb201` run",
                             description="Look up every epoch's cell of a `fastdnas search nb201` run (or of each "
                                         "seed of a --seeds run) in NAS-Bench-201: log.jsonl, genotype.json and "
                                         "benchmark.png get the accuracies; a --seeds run's summary is rewritten.")
    leaf.add_argument("run_dir", metavar="RUN_DIR", help="the --out folder of the search")
    leaf.add_argument("--benchmark", metavar="PATH", required=True,
                      help="NATS-Bench topology archive (folder: lazy) or file, or a NAS-Bench-201 .pth")
    leaf.set_defaults(run=run_nb201_score)


def run_nb201_score(args):
    """`score nb201 RUN_DIR --benchmark PATH`: one run, or every seed of a --seeds run and its summary."""
    from ..nb201.benchmark import Benchmark, BenchmarkError, format_figures
    from ..nb201.runs import score_run, summarise

    try:
        benchmark = Benchmark(args.benchmark)
        seeds = sorted(int(name[5:]) for name in os.listdir(args.run_dir)
                       if name.startswith("seed-") and name[5:].isdigit()) if os.path.isdir(args.run_dir) else []
        for folder in [os.path.join(args.run_dir, f"seed-{s}") for s in seeds] or [args.run_dir]:
            last = score_run(folder, benchmark)
            print(f"{folder}: {last['genotype']}: {format_figures(last['benchmark'])}")
        if seeds:
            _, table = summarise(args.run_dir, seeds)
            print(table)
    except (BenchmarkError, OSError) as error:
        raise UsageError(str(error)) from error
    return 0
