"""One search step (architecture step on a val batch, then weight step on a train batch, through
``Search.search_step``; first or second order) of DARTS and of Auto-DeepLab, in every variant that
applies to the device, side by side in one run:

    reference eager     the plain PyTorch node sums (the original implementations' arithmetic)
    reference graphs    the same, the whole step replayed from CUDA graphs (CUDA only)
    fused eager         the fused kernels
    fused graphs        the fused kernels, the whole step replayed from CUDA graphs (CUDA only)
    reference compile   the reference network under torch.compile (what a user would try first)
    fused compile       the fused kernels under torch.compile (they are custom ops it can trace)

Reports the median step time (``common.step_seconds``, after warm-up steps), its speedup over
reference eager, the memory (CUDA: torch.cuda.max_memory_allocated from the variant's construction
on, warm-up and graph capture included; CPU: bytes autograd saves for backward in one forward,
eager variants only), the time of one evaluation batch (eager variants: the loop evaluates eagerly)
and the extrapolated time of a whole search on this device (``search_hours``). Every figure is
printed as a PERF line (benchmarks/report.py) as soon as it is measured. A variant that fails or
runs out of memory prints ``PERF ...=FAILED reason=...`` and the next one runs.

    python -m benchmarks.search_step [--space darts|autodeeplab] [--order 1|2] [--variant V ...]
                                     [--device cpu|cuda] [--quick | --tiny] [--budget SECONDS] [--out FILE]
"""
import argparse
import gc
import signal
import time
from functools import partial

import torch

from fastdnas import autodeeplab, darts
from fastdnas.search import Search, SearchConfig, cross_entropy_loss
from fastdnas.segmentation import segmentation_loss

from .common import machine, print_table, step_seconds, write_json
from .report import perf, perf_failed, token

VARIANTS = ("reference eager", "reference graphs", "fused eager", "fused graphs", "reference compile",
            "fused compile")
# The order of a run of the CLI: the fused variants first (cheap, and the figures most wanted), the
# reference's CUDA graphs last (the most likely to run out of memory, or of time).
RUN_ORDER = ("fused eager", "fused graphs", "reference eager", "reference graphs")
# Per space: the setting on a GPU (the papers'), on a CPU, for a quick smoke run, and the least
# that exercises every path (the tests: seconds on a loaded 2-core CPU). eval_size:
# the (height, width) of an evaluation batch where it differs from the training crop.
SETTINGS = {
    "darts": {
        "cuda": dict(C=16, layers=8, batch=64, image_size=32),
        "cpu": dict(C=8, layers=5, batch=16, image_size=16),
        "quick": dict(C=4, layers=3, batch=8, image_size=16),
        "tiny": dict(C=4, layers=2, batch=2, image_size=8),
    },
    "autodeeplab": {
        # Cityscapes: 321x321 training crops; evaluation on the whole half-resolution images.
        "cuda": dict(filter_multiplier=8, layers=12, blocks=5, batch=2, image_size=321, eval_size=(512, 1024)),
        "cpu": dict(filter_multiplier=4, layers=4, blocks=3, batch=2, image_size=64),
        "quick": dict(filter_multiplier=2, layers=2, blocks=2, batch=2, image_size=32),
        "tiny": dict(filter_multiplier=2, layers=1, blocks=1, batch=2, image_size=16, eval_size=(16, 24)),
    },
}
NUM_CLASSES = {"darts": 10, "autodeeplab": 19}
# What a whole search runs (fastdnas/search/loop.py): each epoch min(train, val) // batch steps
# (the last partial batch dropped), an architecture step in each from arch_start_epoch on, then an
# evaluation of the whole search-val half (eval mode, no gradients, the last batch partial).
FULL_SEARCH = {
    # DARTS, CIFAR-10 (SPEC section 2): 50 epochs, batch 64, the 50,000 training images halved.
    "darts": dict(epochs=50, arch_start_epoch=0, train=25_000, val=25_000, batch=64),
    # Auto-DeepLab, Cityscapes (the CLI defaults, SPEC): 40 epochs, architecture updates from epoch
    # 20, batch 2, the 2,975 training images halved at random (1,487 / 1,488).
    "autodeeplab": dict(epochs=40, arch_start_epoch=20, train=1487, val=1488, batch=2),
}
SHORT = {"darts": "darts", "autodeeplab": "adl"}


def search_hours(space, step_s, weight_step_s, eval_s):
    """Hours of a whole search (FULL_SEARCH) at these times of a step, of a weight-only step (the
    epochs before arch_start_epoch) and of an evaluation batch (timed at full batch size)."""
    f = FULL_SEARCH[space]
    steps = min(f["train"], f["val"]) // f["batch"]  # DARTS 390, Auto-DeepLab 743
    eval_batches = -(-f["val"] // f["batch"])  # DARTS 391, Auto-DeepLab 744
    arch_epochs = f["epochs"] - f["arch_start_epoch"]
    train = steps * (arch_epochs * step_s + f["arch_start_epoch"] * weight_step_s)
    return (train + f["epochs"] * eval_batches * eval_s) / 3600


def describe(space, s):
    if space == "darts":
        return f"C{s['C']} L{s['layers']} {s['batch']}x3x{s['image_size']}x{s['image_size']}"
    return f"F{s['filter_multiplier']} L{s['layers']} B{s['blocks']} {s['batch']}x3x{s['image_size']}x{s['image_size']}"


def saved_bytes(fn):
    """Bytes of the unique storages autograd saves for backward while fn() runs."""
    storages = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storages.values())


class _Sized:
    """Stands in for a data set: ``Search`` only checks that a batch fits; the batches come from here."""

    def __init__(self, size):
        self.size = size

    def __len__(self):
        return self.size


def _through(model, loss_fn, _model, inputs, targets):
    return loss_fn(model, inputs, targets)


def _batch(space, settings, height, width, device):
    """A random (inputs, targets) batch of the space's task at this image size."""
    n, classes = settings["batch"], NUM_CLASSES[space]
    shape = (n,) if space == "darts" else (n, height, width)
    return [torch.randn(n, 3, height, width).to(device), torch.randint(0, classes, shape).to(device)]


def make_step(space, variant, device, settings, unrolled=False):
    """(search, step function, forward function) for one variant; the network is seeded
    identically. ``step(update_arch=True)`` is one search step, ``forward()`` one training forward."""
    torch.manual_seed(0)
    s = settings
    backend = variant.split()[0]
    size = s["image_size"]
    if space == "darts":
        model = darts.SearchNetwork(C=s["C"], num_classes=NUM_CLASSES[space], layers=s["layers"], backend=backend)
        loss_fn = cross_entropy_loss
    else:
        model = autodeeplab.SearchNetwork(NUM_CLASSES[space], layers=s["layers"], blocks=s["blocks"],
                                          filter_multiplier=s["filter_multiplier"], backend=backend)
        loss_fn = segmentation_loss
    if variant.endswith("compile"):
        loss_fn = partial(_through, torch.compile(model), loss_fn)
    config = SearchConfig(batch_size=s["batch"], epochs=1, unrolled=unrolled)
    search = Search(model, _Sized(s["batch"]), _Sized(s["batch"]), config, loss_fn=loss_fn, device=device,
                    progress=False, log=lambda *a: None, cuda_graphs=variant.endswith("graphs"))
    batches = _batch(space, s, size, size, device) + _batch(space, s, size, size, device)

    def step(update_arch=True):
        search.search_step(*batches, update_arch)

    def forward():
        loss_fn(search.model, *batches[:2])

    return search, step, forward


def make_evaluate(search, space, settings, device):
    """One evaluation batch as the loop runs it (eval mode, no gradients), at eval_size if given."""
    inputs, targets = _batch(space, settings, *settings.get("eval_size", (settings["image_size"],) * 2), device)

    @torch.no_grad()
    def evaluate():
        search.model.eval()
        search.loss_fn(search.model, inputs, targets)
        search.model.train()

    return evaluate


def warmup_steps(variant):
    """Graphs: the eager calls GraphedSearchStep makes first, the capture, and one replay; compile:
    the compilation, and a step after it; eager: lazy optimizer state, library handles and
    algorithm choice (the median of the timed steps takes care of a slow second step)."""
    return {"graphs": 5, "compile": 2}.get(variant.split()[-1], 1)


def subject(space, order):
    """The PERF subject of a space's step: darts1, darts2, adl1."""
    return f"{SHORT[space]}{order}"


def short_name(variant):
    """The PERF variant field: "fused eager" -> fused, "reference graphs" -> ref_graphs."""
    return token(variant.replace("reference", "ref").replace(" eager", ""))


class PhaseTimeout(Exception):
    """SIGTERM (the ``timeout`` of scripts/gpu_check.sh): report the figure in progress, stop."""


_terminated = []  # the SIGTERM, once received (torch.compile wraps the exception it raises in its own)


def _on_sigterm(signum, frame):
    _terminated.append(signum)
    raise PhaseTimeout("the phase's time limit was reached")


def bench_variant(space, variant, device, settings, order, budget_s, eval_seconds):
    """One variant's row; prints each figure as a PERF line as soon as it is measured.
    ``eval_seconds`` (backend -> seconds of an evaluation batch) is read and, by eager variants, filled."""
    tag, name = subject(space, order), short_name(variant)
    backend = variant.split()[0]
    cuda = device == "cuda"
    row = {"bench": f"{space} search step ({order}. order)", "case": describe(space, settings), "device": device,
           "variant": variant}
    metric = "ms"
    try:
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        search, step, forward = make_step(space, variant, device, settings, unrolled=order == 2)
        for _ in range(warmup_steps(variant)):
            step()
        if cuda:
            torch.cuda.synchronize()
        row["warmup_s"] = time.perf_counter() - start
        seconds, row["steps_timed"] = step_seconds(step, device, budget_s)
        row["ms"] = seconds * 1e3
        perf(tag, name, "ms", row["ms"], "ms")
        metric = "MiB"
        if cuda:
            row["peak_MB"] = torch.cuda.max_memory_allocated() / 2**20
            perf(tag, name, "MiB", row["peak_MB"], "MiB")
        elif variant.endswith("eager"):
            row["saved_MB"] = saved_bytes(forward) / 2**20
            perf(tag, name, "saved_MiB", row["saved_MB"], "MiB")
        if variant.endswith("compile"):
            perf(tag, name, "warmup_s", row["warmup_s"], "s")
            return row  # its evaluation passes would compile again: no extrapolation
        weight_seconds = seconds
        if FULL_SEARCH[space]["arch_start_epoch"]:
            metric = "weight_ms"
            weight_seconds = step_seconds(lambda: step(update_arch=False), device, budget_s / 2, min_steps=2)[0]
            perf(tag, name, "weight_ms", weight_seconds * 1e3, "ms")
        if variant.endswith("eager"):
            metric = "eval_ms"
            evaluate = make_evaluate(search, space, settings, device)
            eval_seconds[backend] = step_seconds(evaluate, device, budget_s / 2, min_steps=2)[0]
            perf(tag, name, "eval_ms", eval_seconds[backend] * 1e3, "ms")
        if backend in eval_seconds:
            metric = "search_h"
            row["search_h"] = search_hours(space, seconds, weight_seconds, eval_seconds[backend])
            perf(tag, name, "search_h", row["search_h"], "h")
    except Exception as error:  # one variant failing (out of memory, a compiler error) must not hide the others
        if _terminated:
            error = PhaseTimeout("the phase's time limit was reached")
        row["note"] = f"failed: {type(error).__name__}: {str(error).splitlines()[0][:120] if str(error) else ''}"
        perf_failed(tag, name, metric, error)
        if isinstance(error, PhaseTimeout):
            raise error
    return row


def compare(rows, space, order, device):
    """Speedup (printed at once) and memory ratio over reference eager of every row measured since
    the last call, once reference eager is measured."""
    baseline = next((r for r in rows if r["variant"] == "reference eager" and "ms" in r), None)
    memory_key = "peak_MB" if device == "cuda" else "saved_MB"
    for r in rows if baseline is not None else []:
        if "ms" in r and "speedup" not in r:
            r["speedup"] = baseline["ms"] / r["ms"]
            if r is not baseline:
                perf(subject(space, order), short_name(r["variant"]), "x", r["speedup"], "x")
        if memory_key in r and memory_key in baseline:
            r["mem_ratio"] = r[memory_key] / baseline[memory_key]


def bench_space(space, device, variants, settings, budget_s=3.0, order=1):
    """Rows of ``variants`` in the order given, each compared with reference eager once both are measured."""
    rows, eval_seconds = [], {}
    for i, variant in enumerate(variants):
        try:
            rows.append(bench_variant(space, variant, device, settings, order, budget_s, eval_seconds))
        except PhaseTimeout:
            for rest in variants[i + 1:]:
                perf_failed(subject(space, order), short_name(rest), "ms",
                            "not run: the phase's time limit was reached")
            raise
        finally:
            gc.collect()  # the variant's network, optimizer state and graphs go before the next is built
            if device == "cuda":
                torch.cuda.empty_cache()
        compare(rows, space, order, device)
    return rows


def run(device, quick=False, min_run_time=1.0, skip_compile=False, spaces=("darts", "autodeeplab"), **_):
    """The section of ``benchmarks.run``: every variant that applies, first order."""
    variants = [v for v in VARIANTS if (device == "cuda" or not v.endswith("graphs"))
                and not (skip_compile and v.endswith("compile"))]
    rows = []
    for space in spaces:
        settings = SETTINGS[space]["quick" if quick else device]
        rows += bench_space(space, device, variants, settings, 2 * min_run_time)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", choices=sorted(SETTINGS), default="darts")
    parser.add_argument("--order", type=int, choices=[1, 2], default=1, help="first or second order (unrolled)")
    parser.add_argument("--variant", choices=VARIANTS, action="append",
                        help=f"repeatable (default: {', '.join(RUN_ORDER)}; no graphs on the CPU)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="the small setting")
    size.add_argument("--tiny", action="store_true", help="the least setting (tests)")
    parser.add_argument("--budget", type=float, default=3.0,
                        help="seconds of timed steps per variant (at least 3 steps)")
    parser.add_argument("--out", help="JSON output")
    args = parser.parse_args(argv)
    variants = args.variant or [v for v in RUN_ORDER if args.device == "cuda" or not v.endswith("graphs")]
    settings = SETTINGS[args.space]["tiny" if args.tiny else "quick" if args.quick else args.device]
    signal.signal(signal.SIGTERM, _on_sigterm)
    print(f"{args.space} search step, order {args.order}, {describe(args.space, settings)}, {args.device}: "
          f"{', '.join(variants)}", flush=True)
    try:
        rows = bench_space(args.space, args.device, variants, settings, args.budget, args.order)
    except PhaseTimeout:
        return 124
    print_table(rows, ["variant", "ms", "speedup", "peak_MB", "saved_MB", "mem_ratio", "search_h", "warmup_s",
                       "steps_timed", "note"])
    if args.out:
        write_json(args.out, {"machine": machine(args.device), "results": {"steps": rows}})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
