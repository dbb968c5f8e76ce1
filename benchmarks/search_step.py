"""One first-order DARTS search step (architecture step on a val batch, then weight step on a
train batch, through fastdnas.search), fused vs reference backend, side by side in one run.

Reports the median step time, the bytes autograd saves for backward in one step (sum over unique
storages seen by saved_tensors_hooks) and, on CUDA, the peak memory.
"""
import torch

from fastdnas.darts import SearchNetwork
from fastdnas.data.base import ImageSet
from fastdnas.search import Search, SearchConfig

from .common import median_seconds


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


def _make_search(backend, device, batch, image_size, C, layers):
    torch.manual_seed(0)
    model = SearchNetwork(C=C, num_classes=10, layers=layers, backend=backend)
    images = torch.randn(batch, 3, image_size, image_size)
    labels = torch.randint(0, 10, (batch,))
    data = ImageSet(images, labels, torch.zeros(3), torch.ones(3))
    config = SearchConfig(batch_size=batch, epochs=1)
    search = Search(model, data, data, config, device=device, progress=False, log=lambda *a: None)
    x, y = images.to(device), labels.to(device)
    return search, x, y


def bench_search_step(device, batch=None, image_size=32, C=16, layers=8, min_run_time=2.0):
    batch = batch or (64 if device == "cuda" else 16)
    rows = []
    for backend in ("reference", "fused"):
        search, x, y = _make_search(backend, device, batch, image_size, C, layers)

        def step():
            search.architect.step(x, y, x, y)
            search.weight_step(x, y)

        def forward_loss():
            loss, _ = search.architect.loss_fn(search.model, x, y)
            return loss

        step()  # warm-up
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        seconds = median_seconds(step, device, min_run_time)
        row = {
            "op": "darts search step (1st order)",
            "shape": f"C{C} L{layers} {batch}x3x{image_size}x{image_size}",
            "dtype": "float32",
            "device": device,
            "backend": backend,
            "step_ms": seconds * 1e3,
            "saved_MB": saved_bytes(forward_loss) / 2**20,
        }
        if device == "cuda":
            row["peak_MB"] = torch.cuda.max_memory_allocated() / 2**20
        rows.append(row)
        del search
    ref, fused = rows
    fused["speedup"] = ref["step_ms"] / fused["step_ms"]
    fused["saved_ratio"] = fused["saved_MB"] / ref["saved_MB"]
    return rows
