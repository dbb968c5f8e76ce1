"""torch.profiler summary of one search step: the operators (and, on CUDA, the kernels) that take
the most time, as a table saved next to the benchmark results (and a Chrome trace on request).

    python -m benchmarks.profile_step [--space darts|autodeeplab] [--variant "fused eager"]
                                      [--device cuda|cpu] [--quick] [--trace] [--out DIR]
"""
import argparse
import os

import torch
from torch.profiler import ProfilerActivity, profile

from .search_step import SETTINGS, VARIANTS, describe, make_step


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", choices=sorted(SETTINGS), default="darts")
    parser.add_argument("--variant", choices=VARIANTS, default="fused eager")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="the small setting")
    parser.add_argument("--steps", type=int, default=3, help="steps profiled (after 5 warm-up steps)")
    parser.add_argument("--rows", type=int, default=30, help="rows of the table")
    parser.add_argument("--trace", action="store_true", help="also write the Chrome trace (large)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"), help="folder")
    args = parser.parse_args(argv)

    settings = SETTINGS[args.space]["quick" if args.quick else args.device]
    _, step, _ = make_step(args.space, args.variant, args.device, settings)
    for _ in range(5):
        step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device == "cuda" else [])
    if args.device == "cuda":
        torch.cuda.synchronize()
    with profile(activities=activities) as prof:
        for _ in range(args.steps):
            step()
        if args.device == "cuda":
            torch.cuda.synchronize()
    sort_by = "self_cuda_time_total" if args.device == "cuda" else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=sort_by, row_limit=args.rows)
    title = (f"{args.space} search step, {args.variant}, {describe(args.space, settings)}, {args.device}, "
             f"{args.steps} steps, sorted by {sort_by}")
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"profile-{args.space}-{args.variant.replace(' ', '-')}-{args.device}")
    with open(stem + ".txt", "w") as f:
        f.write(title + "\n" + table + "\n")
    print(title)
    print(table)
    print(f"wrote {stem}.txt")
    if args.trace:
        prof.export_chrome_trace(stem + ".json")
        print(f"wrote {stem}.json")


if __name__ == "__main__":
    main()
