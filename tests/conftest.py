import os
import sys

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import fastdnas  # noqa: F401  (fails loudly if the extension is not built)

CUDA = torch.cuda.is_available()
# CUDA cases are parametrised everywhere and skipped, visibly, where no GPU is present.
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not CUDA, reason="no CUDA GPU on this machine"))]


def rel_err(actual, expected):
    """Max abs error relative to the largest magnitude of the expected tensor."""
    actual, expected = actual.double(), expected.double()
    if expected.numel() == 0:
        return 0.0
    return ((actual - expected).abs().max() / expected.abs().max().clamp_min(1e-30)).item()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _no_tf32():
    """References in full float32: cuBLAS and cuDNN may otherwise round float32 operands to TF32
    (a 10-bit mantissa) on Ampere and later GPUs, and the reference, not the kernel, would be off."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def count_host_reads(monkeypatch):
    """The files of the callers of every tensor-to-host read (.item(), .tolist(), bool, float, int)
    from now on, in order."""
    callers = []
    for name in ("item", "tolist", "__bool__", "__float__", "__int__"):
        original = getattr(torch.Tensor, name)

        def counting(self, *args, _original=original):
            callers.append(sys._getframe(1).f_code.co_filename)
            return _original(self, *args)

        monkeypatch.setattr(torch.Tensor, name, counting)
    return callers


def package_files(paths):
    """The paths among `paths` inside the fastdnas package, relative to it, wherever the clone
    lives (a virtual environment inside a folder named fastdnas holds torch under
    .../fastdnas/.venv/: those files are not the package's)."""
    package = os.path.dirname(os.path.abspath(fastdnas.__file__)) + os.sep
    return [os.path.relpath(p, package) for p in paths if os.path.abspath(p).startswith(package)]


def saved_bytes(fn):
    """Bytes of the unique storages autograd saves for backward while fn() runs."""
    storages = {}

    def pack(tensor):
        storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storages.values())


def over_thread_counts(fn, repeats=1):
    """fn()'s results with 1 thread and with several (``repeats`` runs each), for determinism tests."""
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, max(2, threads)):
            torch.set_num_threads(n)
            results += [fn() for _ in range(repeats)]
    finally:
        torch.set_num_threads(threads)
    return results


def replay_in_cuda_graph(run, before_replay):
    """run()'s outputs computed by a CUDA graph: run once on a side stream (warm-up), captured,
    then before_replay() (new input values) and one replay."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        run()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outputs = run()
    before_replay()
    graph.replay()
    torch.cuda.synchronize()
    return outputs


@pytest.fixture
def one_thread():
    """Tiny networks: a second thread only adds synchronisation (and stalls badly on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class ToySearchModel(torch.nn.Module):
    """Two mixed 'edges' around a small MLP with BatchNorm: curved enough in (w, alpha) for the
    unrolled term to matter, and batch statistics matter (the distributed and AMP tests)."""

    def __init__(self, in_features=6, hidden=5, classes=3, alpha_scale=1.0, affine=False):
        super().__init__()
        self.fc1 = torch.nn.Linear(in_features, hidden)
        self.bn = torch.nn.BatchNorm1d(hidden, affine=affine)
        self.fc2 = torch.nn.Linear(hidden, classes)
        self.alphas = torch.nn.Parameter(alpha_scale * torch.randn(2, 3))

    def arch_parameters(self):
        return [self.alphas]

    def weight_parameters(self):
        return [p for name, p in self.named_parameters() if name != "alphas"]

    def forward(self, x):
        weights = torch.softmax(self.alphas, dim=-1)
        h = self.fc1(x.flatten(1))
        h = weights[0, 0] * h + weights[0, 1] * torch.tanh(h) + weights[0, 2] * torch.sin(h)
        h = self.bn(h)
        h = weights[1, 0] * h + weights[1, 1] * torch.tanh(h) + weights[1, 2] * h * h
        return self.fc2(h)


class OpNames(TorchDispatchMode):
    """Records the names of the ops dispatched while it is active (the backward's kernels included)."""

    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.__name__)
        return func(*args, **(kwargs or {}))


@pytest.fixture
def no_plots(monkeypatch):
    """Searches without their pictures (test_cli.py tests them; they take seconds)."""
    import fastdnas.viz

    for plot in ("plot_genotype", "plot_alpha_history"):
        monkeypatch.setattr(fastdnas.viz, plot, lambda *args, **kwargs: None)


def write_image_folder(root, classes=3, per_class=2, split="val"):
    """A tiny ImageFolder split (root/split/<class>/<image>.png) of random images of two sizes."""
    from PIL import Image

    generator = torch.Generator().manual_seed(0)
    for c in range(classes):
        folder = root / split / f"n{c:08d}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            pixels = torch.randint(0, 256, (40 + 8 * i, 48, 3), dtype=torch.uint8, generator=generator)
            Image.fromarray(pixels.numpy()).save(folder / f"image_{i}.png")
