"""Shared helpers of the benchmarks: timing, machine description, table and JSON output."""
import datetime
import json
import os
import platform
import statistics
import time

import torch
import torch.utils.benchmark as tbench


def median_seconds(fn, device, min_run_time=1.0):
    """Median wall time of fn() (synchronised on CUDA), after a warm-up call."""
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    timer = tbench.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_run_time).median


def step_seconds(fn, device, budget_s=3.0, min_steps=3, max_steps=50):
    """(median seconds of one fn() call, calls timed) for an fn that is already warmed up: calls
    until ``budget_s`` is spent (at least ``min_steps``, at most ``max_steps``). On CUDA each call
    is timed by events recorded between consecutive calls, the host at most one call ahead of the
    device (as in a training loop, host and device overlap); on the CPU by perf_counter."""
    cuda = device == "cuda"
    clock = (lambda: torch.cuda.Event(enable_timing=True)) if cuda else None
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    marks = [clock() if cuda else start]
    if cuda:
        marks[0].record()
    while len(marks) <= min_steps or (len(marks) <= max_steps and time.perf_counter() - start < budget_s):
        fn()
        if cuda:
            marks.append(clock())
            marks[-1].record()
            marks[-2].synchronize()
        else:
            marks.append(time.perf_counter())
    if cuda:
        marks[-1].synchronize()
        times = [a.elapsed_time(b) / 1e3 for a, b in zip(marks, marks[1:])]
    else:
        times = [b - a for a, b in zip(marks, marks[1:])]
    return statistics.median(times), len(times)


def machine(device):
    info = {
        "date": datetime.date.today().isoformat(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "device": device,
    }
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info


def print_table(rows, columns):
    widths = [max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(_fmt(r.get(c)).ljust(w) for c, w in zip(columns, widths)))


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.3g}"
    return "" if v is None else str(v)


def write_json(path, payload):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=2)
    os.replace(tmp, path)
    print(f"wrote {path}")
