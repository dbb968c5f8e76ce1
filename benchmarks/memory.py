"""Memory of a DARTS search step per backend: fused (mixed_node: pools, skip and BatchNorms inside,
one ReLU per edge), fused_sum (only the node sums fused) and reference, side by side in one run.

For the DARTS search network (C=16, 8 cells, 32x32; batch 64 on CUDA, 16 on CPU) it reports the
bytes autograd saves for backward in one forward pass (unique storages seen by
saved_tensors_hooks), the peak memory of a step after a warm-up step (CUDA: max_memory_allocated;
CPU: the peak RSS of a fresh subprocess per backend) and its growth over the memory held before
the step (step_peak_MB, peak_ratio), and the median time of a first-order search step (architecture step, then weight step).

    python -m benchmarks.memory [--device cpu|cuda] [--quick]
"""
import argparse
import json
import os
import subprocess
import sys

import torch

from .common import median_seconds
from .search_step import make_step, saved_bytes

BACKENDS = ("reference", "fused_sum", "fused")
COLUMNS = ["op", "shape", "device", "backend", "saved_MB", "saved_ratio", "peak_MB", "step_peak_MB", "peak_ratio",
           "step_ms", "speedup"]


def _darts_step(backend, device, batch, image_size, C, layers):
    """(search, step, forward) of a first-order DARTS search step, as the step benchmark builds it."""
    return make_step("darts", backend, device, {"C": C, "layers": layers, "image_size": image_size, "batch": batch})


def _status_bytes(field):
    """VmRSS / VmHWM (peak RSS) of this process from /proc/self/status."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not found in /proc/self/status")


def measure_cpu_peak(backend, batch, image_size, C, layers):
    """Runs in a fresh process: (peak RSS of a step, its growth over the RSS before it) in bytes.
    A warm-up step first (lazy imports, allocator caches), then the peak RSS is reset."""
    _, step, _ = _darts_step(backend, "cpu", batch, image_size, C, layers)
    step()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS
    before = _status_bytes("VmRSS")
    step()
    peak = _status_bytes("VmHWM")
    return peak, peak - before


def _cpu_peak_in_subprocess(backend, batch, image_size, C, layers):
    code = ("import json, torch; torch.set_num_threads({threads}); from benchmarks.memory import measure_cpu_peak; "
            "print(json.dumps(measure_cpu_peak({backend!r}, {batch}, {image_size}, {C}, {layers})))").format(
        threads=torch.get_num_threads(), backend=backend, batch=batch, image_size=image_size, C=C, layers=layers)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    # Large blocks straight from mmap, so freed activations leave the RSS at once (glibc keeps
    # freed heap memory otherwise, and the RSS would show the allocator, not the step).
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="16384", MALLOC_TRIM_THRESHOLD_="16384")
    out = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_memory(device, batch=None, image_size=32, C=16, layers=8, min_run_time=2.0):
    batch = batch or (64 if device == "cuda" else 16)
    rows = []
    for backend in BACKENDS:
        row = {"op": "darts search step (1st order)", "shape": f"C{C} L{layers} {batch}x3x{image_size}x{image_size}",
               "dtype": "float32", "device": device, "backend": backend}
        if device == "cpu":
            peak, growth = _cpu_peak_in_subprocess(backend, batch, image_size, C, layers)
            row["peak_MB"], row["step_peak_MB"] = peak / 2**20, growth / 2**20
        search, step, forward = _darts_step(backend, device, batch, image_size, C, layers)
        if device == "cuda":
            step()  # warm-up
            torch.cuda.synchronize()
            before = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            step()
            torch.cuda.synchronize()
            row["peak_MB"] = torch.cuda.max_memory_allocated() / 2**20
            row["step_peak_MB"] = (torch.cuda.max_memory_allocated() - before) / 2**20
        row["saved_MB"] = saved_bytes(forward) / 2**20
        row["step_ms"] = median_seconds(step, device, min_run_time) * 1e3
        rows.append(row)
        del search, step, forward
    ref = rows[0]
    for row in rows:
        row["saved_ratio"] = row["saved_MB"] / ref["saved_MB"]
        row["peak_ratio"] = row["step_peak_MB"] / ref["step_peak_MB"]
        row["speedup"] = ref["step_ms"] / row["step_ms"]
    return rows


def run(device, quick=False, min_run_time=1.0, **_):
    """The section of ``benchmarks.run``: the rows of bench_memory in the suite's columns."""
    small = dict(C=8, layers=5, image_size=16, batch=8) if quick else {}
    rows = bench_memory(device, min_run_time=2 * min_run_time, **small)
    return [{"bench": "darts step memory", "case": row.pop("shape"), "variant": row.pop("backend"),
             "ms": row.pop("step_ms"), "mem_ratio": row.pop("saved_ratio"),
             **{k: v for k, v in row.items() if k not in ("op", "dtype")}} for row in rows]


def main(argv=None):
    from .common import machine, print_table, write_json

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="a small network, for a smoke run")
    parser.add_argument("--out", help="JSON output (default benchmarks/results/memory-<device>-<date>.json)")
    args = parser.parse_args(argv)
    small = dict(C=8, layers=5, image_size=16, batch=8) if args.quick else {}
    rows = bench_memory(args.device, min_run_time=0.5 if args.quick else 2.0, **small)
    print_table(rows, COLUMNS)
    info = machine(args.device)
    out = args.out or os.path.join(os.path.dirname(__file__), "results", f"memory-{args.device}-{info['date']}.json")
    write_json(out, {"machine": info, "results": {"memory": rows}})


if __name__ == "__main__":
    main()
