"""torch.profiler summary of one search step: the operators (and, on CUDA, the kernels) that take
the most time, as a table saved next to the benchmark results (and a Chrome trace on request).
PERF lines give the device's busy time per step (the sum of the kernels' times; CPU: of the
operators' self times) and the ``--top`` kernels (CPU: operators) by that time, per step.

    python -m benchmarks.profile_step [--space darts|autodeeplab] [--variant "fused eager"]
                                      [--device cuda|cpu] [--quick] [--top N] [--trace] [--out DIR]
"""
import argparse
import os
import re

import torch
from torch.profiler import ProfilerActivity, profile

from .report import perf, token
from .search_step import SETTINGS, VARIANTS, describe, make_step


def kernel_name(key):
    """A kernel's bare function name: no return type, namespaces, template or call arguments."""
    name = re.sub(r"^void |\(anonymous namespace\)::", "", key)
    return token(re.split(r"[<(]", name)[0].split("::")[-1])[:40]


def top_kernels(events, cuda, steps, top):
    """(busy ms per step, [(name, ms per step)] of the ``top`` kernels, or CPU operators, by self time)."""
    if cuda:
        events = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
        # self_cuda_time_total before torch 2.4's rename
        self_us = [e.self_device_time_total if hasattr(e, "self_device_time_total") else e.self_cuda_time_total
                   for e in events]
    else:
        self_us = [e.self_cpu_time_total for e in events]
    ranked = sorted(zip(self_us, (e.key for e in events)), reverse=True)
    return sum(self_us) / steps / 1e3, [(kernel_name(key), us / steps / 1e3) for us, key in ranked[:top]]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", choices=sorted(SETTINGS), default="darts")
    parser.add_argument("--variant", choices=VARIANTS, default="fused eager")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="the small setting")
    parser.add_argument("--steps", type=int, default=3, help="steps profiled (after 5 warm-up steps)")
    parser.add_argument("--rows", type=int, default=30, help="rows of the table")
    parser.add_argument("--top", type=int, default=6, help="kernels given as PERF lines")
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
    busy, kernels = top_kernels(prof.key_averages(), args.device == "cuda", args.steps, args.top)
    subject = f"profile_{args.space}"
    perf(subject, "busy", "ms", busy, "ms/step")
    for rank, (name, ms) in enumerate(kernels, 1):
        perf(subject, f"{rank}_{name}", "ms", ms, "ms/step")
    if args.trace:
        prof.export_chrome_trace(stem + ".json")
        print(f"wrote {stem}.json")


if __name__ == "__main__":
    main()
