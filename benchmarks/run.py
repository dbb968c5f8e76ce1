"""The one entry of the benchmarks: runs every section that applies to this machine (CPU rows,
and CUDA rows where a GPU is present), prints one table and writes JSON.

    python -m benchmarks.run [--quick] [--skip-compile] [--compile-on-cpu] [--only SECTION ...]
                             [--device cpu|cuda] [--threads N] [--min-run-time SECONDS] [--out FILE]

Sections: kernels (fused ops vs their references, bandwidth vs a copy), passes (the depthwise
kernels' forward, input and weight gradients one by one against torch's), steps (DARTS and
Auto-DeepLab search steps in every variant), memory (saved-for-backward bytes, peak memory and
step time of a DARTS search step per backend), methods (DARTS, PC-DARTS and GDAS search steps,
reference and fused, timed interleaved), launches (compute ops dispatched per forward+backward and
per search step, per backend: counted once, it is the same on every device). ``--quick`` runs small cases with short timing (a
few minutes on a 2-core CPU). The torch.compile variants run on CUDA; on the CPU only with
``--compile-on-cpu`` (inductor needs more than ten minutes for even a tiny supernet there).
"""
import argparse
import os

import torch

from . import kernel_passes, kernels, launches, memory, methods, search_step
from .common import machine, print_table, write_json

# name -> run(device, quick=..., min_run_time=..., skip_compile=...) returning table rows. A new
# section is one more entry here.
SECTIONS = {
    "kernels": kernels.run,
    "passes": kernel_passes.run,
    "steps": search_step.run,
    "memory": memory.run,
    "methods": methods.run,
    "launches": launches.run,
}
# The columns of the one table, in order; a row leaves out what does not apply to it. Columns a
# section adds that are not listed here are printed after these.
COLUMNS = ["bench", "case", "device", "variant", "ms", "speedup", "vs_darts", "GBps", "copy_fraction", "peak_MB",
           "saved_MB", "mem_ratio", "torch_ms", "fp32_fraction", "search_h", "ops_fwd_bwd", "ops_step", "ops_ratio", "note"]


def table_columns(rows):
    present = {key for row in rows for key in row}
    extra = sorted(present - set(COLUMNS))
    return [c for c in COLUMNS if c in present] + extra


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="JSON output (default benchmarks/results/<device>-<date>.json)")
    parser.add_argument("--quick", action="store_true", help="small cases and short timing, for a smoke run")
    parser.add_argument("--skip-compile", action="store_true", help="leave out the torch.compile variants")
    parser.add_argument("--compile-on-cpu", action="store_true",
                        help="run the torch.compile variants on the CPU too (left out by default: compiling a "
                             "supernet takes tens of minutes on a small CPU)")
    parser.add_argument("--only", choices=sorted(SECTIONS), action="append", help="run this section (repeatable)")
    parser.add_argument("--device", choices=["cpu", "cuda"], action="append",
                        help="benchmark this device (repeatable; default: the CPU, and CUDA when present)")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("--min-run-time", type=float, help="seconds of timing per case (default 1, --quick 0.2)")
    args = parser.parse_args(argv)

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    devices = args.device or ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if "cuda" in devices and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available here")
    sections = args.only or list(SECTIONS)
    min_run_time = args.min_run_time or (0.2 if args.quick else 1.0)
    results = {section: [] for section in sections}
    for device in devices:
        for section in sections:
            if section == "launches" and device != devices[0]:
                continue  # the count does not depend on the device
            print(f"running {section} on {device} ...", flush=True)
            results[section] += SECTIONS[section](device, quick=args.quick, min_run_time=min_run_time,
                                                  skip_compile=args.skip_compile or (device == "cpu" and not
                                                                                     args.compile_on_cpu))
    rows = [row for section in sections for row in results[section]]
    print()
    print_table(rows, table_columns(rows))
    info = machine(devices[-1])
    info["quick"] = args.quick
    name = info.get("gpu", "cpu").replace(" ", "_")
    out = args.out or os.path.join(os.path.dirname(__file__), "results", f"{name}-{info['date']}.json")
    write_json(out, {"machine": info, "results": results})


if __name__ == "__main__":
    main()
