"""One first-order search step (architecture step on a val batch, then weight step on a train
batch, through ``Search.search_step``) of DARTS and of Auto-DeepLab, in every variant that
applies to the device, side by side in one run:

    reference eager     the plain PyTorch node sums (the original implementations' arithmetic)
    reference compile   the same network under torch.compile (what a user would try first)
    fused eager         the fused kernels
    fused compile       the fused kernels under torch.compile (they are custom ops it can trace)
    fused graphs        the fused kernels, the whole step replayed from CUDA graphs (CUDA only)

Reports the median step time, its speedup over reference eager, the memory (CUDA: peak allocated
during the steps, model and optimizer state included; CPU: bytes autograd saves for backward in
one forward, eager variants only) and, for DARTS, the time a full 50-epoch CIFAR-10 search would
take at that step time (19,550 steps, evaluation passes not included).
"""
import gc
from functools import partial

import torch

from fastdnas import autodeeplab, darts
from fastdnas.search import Search, SearchConfig, cross_entropy_loss
from fastdnas.segmentation import segmentation_loss

from .common import median_seconds

VARIANTS = ("reference eager", "reference compile", "fused eager", "fused compile", "fused graphs")
DARTS_SEARCH_STEPS = 19_550  # 50 epochs x 391 steps of batch 64 over the 25,000 search-train images
# Per space: the setting on a GPU (the papers'), on a CPU, and for a quick smoke run.
SETTINGS = {
    "darts": {
        "cuda": dict(C=16, layers=8, batch=64, image_size=32),
        "cpu": dict(C=8, layers=5, batch=16, image_size=16),
        "quick": dict(C=4, layers=3, batch=8, image_size=16),
    },
    "autodeeplab": {
        "cuda": dict(filter_multiplier=8, layers=12, blocks=5, batch=2, image_size=321),
        "cpu": dict(filter_multiplier=4, layers=4, blocks=3, batch=2, image_size=64),
        "quick": dict(filter_multiplier=2, layers=2, blocks=2, batch=2, image_size=32),
    },
}
NUM_CLASSES = {"darts": 10, "autodeeplab": 19}


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


def make_step(space, variant, device, settings):
    """(search, step function, forward function) for one variant; the network is seeded identically."""
    torch.manual_seed(0)
    s = settings
    backend = variant.split()[0]
    classes = NUM_CLASSES[space]
    size = s["image_size"]
    if space == "darts":
        model = darts.SearchNetwork(C=s["C"], num_classes=classes, layers=s["layers"], backend=backend)
        target_shape, loss_fn = (s["batch"],), cross_entropy_loss
    else:
        model = autodeeplab.SearchNetwork(classes, layers=s["layers"], blocks=s["blocks"],
                                          filter_multiplier=s["filter_multiplier"], backend=backend)
        target_shape, loss_fn = (s["batch"], size, size), segmentation_loss
    if variant.endswith("compile"):
        loss_fn = partial(_through, torch.compile(model), loss_fn)
    config = SearchConfig(batch_size=s["batch"], epochs=1)
    search = Search(model, _Sized(s["batch"]), _Sized(s["batch"]), config, loss_fn=loss_fn, device=device,
                    progress=False, log=lambda *a: None, cuda_graphs=variant.endswith("graphs"))
    batches = [t.to(device) for _ in range(2) for t in (torch.randn(s["batch"], 3, size, size),
                                                          torch.randint(0, classes, target_shape))]

    def step():
        search.search_step(*batches)

    def forward():
        loss_fn(search.model, *batches[:2])

    return search, step, forward


def bench_space(space, device, variants, settings, min_run_time, warmup_steps=5):
    rows = []
    for variant in variants:
        row = {"bench": f"{space} search step", "case": describe(space, settings), "device": device,
               "variant": variant}
        try:
            search, step, forward = make_step(space, variant, device, settings)
            for _ in range(warmup_steps):  # compilation, graph warm-up and capture, lazy optimizer state
                step()
            if device == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            seconds = median_seconds(step, device, min_run_time)
            row["ms"] = seconds * 1e3
            if device == "cuda":
                row["peak_MB"] = torch.cuda.max_memory_allocated() / 2**20
            elif variant.endswith("eager"):
                row["saved_MB"] = saved_bytes(forward) / 2**20
            if space == "darts":
                row["search_50ep_min"] = seconds * DARTS_SEARCH_STEPS / 60
        except Exception as error:  # one variant failing (e.g. a compiler error) must not hide the others
            row["note"] = f"failed: {type(error).__name__}: {str(error).splitlines()[0][:120] if str(error) else ''}"
        rows.append(row)
        search = step = forward = None
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
    baseline = next((r for r in rows if r["variant"] == "reference eager" and "ms" in r), None)
    if baseline is not None:
        memory_key = "peak_MB" if device == "cuda" else "saved_MB"
        for r in rows:
            if "ms" in r:
                r["speedup"] = baseline["ms"] / r["ms"]
            if memory_key in r and memory_key in baseline:
                r["mem_ratio"] = r[memory_key] / baseline[memory_key]
    return rows


def run(device, quick=False, min_run_time=1.0, skip_compile=False, spaces=("darts", "autodeeplab"), **_):
    variants = [v for v in VARIANTS if (device == "cuda" or not v.endswith("graphs"))
                and not (skip_compile and v.endswith("compile"))]
    rows = []
    for space in spaces:
        settings = SETTINGS[space]["quick" if quick else device]
        rows += bench_space(space, device, variants, settings, 2 * min_run_time)
    return rows
