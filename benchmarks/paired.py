"""Reference against fused search steps, interleaved: step by step, the two sides alternate, so a
machine shared with other jobs slows both alike. Prints each side's median step time and the
median of the per-pair ratios (reference / fused).

    python -m benchmarks.paired [--space darts|autodeeplab] [--pairs N] [--threads N] [--device cpu|cuda]
"""
import argparse
import statistics
import time

import torch

from .search_step import SETTINGS, describe, make_step


def paired_steps(space, device="cpu", pairs=10, warmup=2):
    settings = SETTINGS[space][device]
    steps = {variant: make_step(space, variant, device, settings)[1] for variant in ("reference eager", "fused eager")}
    times = interleaved_times(steps, device, pairs, warmup)
    ratios = [r / f for r, f in zip(times["reference eager"], times["fused eager"])]
    return {"space": space, "case": describe(space, settings), "device": device, "pairs": pairs,
            "reference_ms": 1e3 * statistics.median(times["reference eager"]),
            "fused_ms": 1e3 * statistics.median(times["fused eager"]), "ratio": statistics.median(ratios)}


def interleaved_times(steps, device="cpu", pairs=10, warmup=2):
    """{name: [seconds of each call]}: ``warmup`` calls of every step, then ``pairs`` rounds in
    which each step runs once, the order alternating round by round."""
    for _ in range(warmup):
        for step in steps.values():
            step()
    times = {variant: [] for variant in steps}
    for i in range(pairs):
        order = list(steps) if i % 2 == 0 else list(reversed(steps))  # alternate which side goes first
        for variant in order:
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            steps[variant]()
            if device == "cuda":
                torch.cuda.synchronize()
            times[variant].append(time.perf_counter() - start)
    return times


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", choices=["darts", "autodeeplab"], action="append")
    parser.add_argument("--pairs", type=int, default=10)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    for space in args.space or ["darts", "autodeeplab"]:
        row = paired_steps(space, args.device, args.pairs)
        print(f"{row['space']} {row['case']} ({row['device']}, {torch.get_num_threads()} threads, {row['pairs']} pairs): "
              f"reference {row['reference_ms']:.0f} ms, fused {row['fused_ms']:.0f} ms, "
              f"median ratio {row['ratio']:.2f}x", flush=True)


if __name__ == "__main__":
    main()
