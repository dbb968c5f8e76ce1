"""The one entry of the benchmarks: runs everything that applies to this machine, prints one
table and writes JSON.

    python -m benchmarks.run [--out FILE] [--quick]
"""
import argparse
import os

import torch

from .common import machine, print_table, write_json
from .kernels import CASES, bench_mixed_sum

COLUMNS = ["op", "K", "shape", "dtype", "device", "reference_ms", "fused_ms", "speedup", "fused_GBps", "copy_GBps",
           "fraction_of_copy"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="JSON output (default benchmarks/results/<device>-<date>.json)")
    parser.add_argument("--quick", action="store_true", help="smaller cases and shorter timing, for a smoke run")
    args = parser.parse_args(argv)

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    cases = CASES[:1] if args.quick else CASES
    min_run_time = 0.2 if args.quick else 1.0
    results = []
    for device in devices:
        results += bench_mixed_sum(device, cases=cases, min_run_time=min_run_time)
    print_table(results, COLUMNS)
    info = machine(devices[-1])
    name = info.get("gpu", "cpu").replace(" ", "_")
    out = args.out or os.path.join(os.path.dirname(__file__), "results", f"{name}-{info['date']}.json")
    write_json(out, {"machine": info, "results": results})


if __name__ == "__main__":
    main()
