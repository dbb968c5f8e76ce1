import pytest
import torch

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


def saved_bytes(fn):
    """Bytes of the unique storages autograd saves for backward while fn() runs."""
    storages = {}

    def pack(tensor):
        storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storages.values())


@pytest.fixture
def one_thread():
    """Tiny networks: a second thread only adds synchronisation (and stalls badly on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
