"""The one entry of the benchmarks: runs everything that applies to this machine, prints the
tables and writes JSON.

    python -m benchmarks.run [--out FILE] [--quick] [--only kernels|steps|memory]
"""
import argparse
import os

import torch

from .common import machine, print_table, write_json
from .kernels import CASES, bench_mixed_sum
from .memory import COLUMNS as MEMORY_COLUMNS
from .memory import bench_memory
from .search_step import bench_search_step

KERNEL_COLUMNS = ["op", "K", "shape", "dtype", "device", "reference_ms", "fused_ms", "speedup", "fused_GBps",
                  "copy_GBps", "fraction_of_copy"]
STEP_COLUMNS = ["op", "shape", "device", "backend", "step_ms", "speedup", "saved_MB", "saved_ratio", "peak_MB"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="JSON output (default benchmarks/results/<device>-<date>.json)")
    parser.add_argument("--quick", action="store_true", help="smaller cases and shorter timing, for a smoke run")
    parser.add_argument("--only", choices=["kernels", "steps", "memory"], help="run one section only")
    args = parser.parse_args(argv)

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    min_run_time = 0.2 if args.quick else 1.0
    results = {"kernels": [], "steps": [], "memory": []}
    for device in devices:
        if args.only in (None, "kernels"):
            results["kernels"] += bench_mixed_sum(device, cases=CASES[:1] if args.quick else CASES,
                                                  min_run_time=min_run_time)
        if args.only in (None, "steps"):
            small = dict(C=8, layers=5, image_size=16, batch=8) if args.quick else {}
            results["steps"] += bench_search_step(device, min_run_time=2 * min_run_time, **small)
        if args.only in (None, "memory"):
            small = dict(C=8, layers=5, image_size=16, batch=8) if args.quick else {}
            results["memory"] += bench_memory(device, min_run_time=2 * min_run_time, **small)
    for section, columns in (("kernels", KERNEL_COLUMNS), ("steps", STEP_COLUMNS), ("memory", MEMORY_COLUMNS)):
        if results[section]:
            print()
            print_table(results[section], columns)
    info = machine(devices[-1])
    name = info.get("gpu", "cpu").replace(" ", "_")
    out = args.out or os.path.join(os.path.dirname(__file__), "results", f"{name}-{info['date']}.json")
    write_json(out, {"machine": info, "results": results})


if __name__ == "__main__":
    main()
