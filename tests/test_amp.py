"""Mixed precision: the fused ops under autocast, fused == reference networks in bfloat16, bf16
search and retraining on CPU, and float16 loss scaling in the architect and the loop."""
import json

import pytest
import torch
from conftest import ToySearchModel, rel_err

from fastdnas import cli, ops, reference
from fastdnas.autodeeplab import SearchNetwork as AutoDeepLabSearchNetwork
from fastdnas.darts import SearchNetwork as DartsSearchNetwork
from fastdnas.precision import MixedPrecision
from fastdnas.search import Architect, load_checkpoint

BF16 = 1.6e-2  # the kernels' bfloat16 tolerance (tests/test_mixed_sum.py)


pytestmark = pytest.mark.usefixtures("one_thread")


def bf16_autocast():
    return torch.autocast("cpu", dtype=torch.bfloat16)


@pytest.mark.parametrize("op", ["mixed_sum", "trellis_aggregate", "resize_sum"])
def test_ops_take_mixed_dtypes_under_autocast_and_keep_weights_float32(op):
    """Candidate outputs arrive in mixed dtypes under autocast: the ops cast them, never the weights."""
    shapes = {"mixed_sum": [(2, 3, 5, 5)] * 3, "trellis_aggregate": [(2, 3, 5, 5)] * 4,
              "resize_sum": [(2, 3, 5, 5), (2, 3, 3, 4)]}[op]
    inputs = [torch.randn(s, dtype=torch.float32 if i % 2 else torch.bfloat16, requires_grad=True)
              for i, s in enumerate(shapes)]
    weights = torch.rand(len(inputs) if op != "trellis_aggregate" else 2, requires_grad=True)

    def call(module, tensors):
        if op == "mixed_sum":
            return module.mixed_sum(tensors, weights)
        if op == "trellis_aggregate":
            return module.trellis_aggregate([tensors[:2], tensors[2:]], weights)
        return module.resize_sum(tensors, (6, 7), weights)

    with bf16_autocast():
        out = call(ops, inputs)
    assert out.dtype == torch.bfloat16
    (out.float() * torch.linspace(-1, 1, out.numel()).view(out.shape)).sum().backward()
    assert weights.grad.dtype == torch.float32
    got = [out.float(), weights.grad] + [x.grad.float() for x in inputs]

    for x in inputs + [weights]:
        x.grad = None
    want_out = call(reference, [x.bfloat16() for x in inputs])  # the definition, on the autocast dtype
    (want_out.float() * torch.linspace(-1, 1, out.numel()).view(out.shape)).sum().backward()
    want = [want_out.float(), weights.grad] + [x.grad.float() for x in inputs]
    for g, w in zip(got, want, strict=True):
        assert rel_err(g, w) <= BF16


def darts_network():
    return DartsSearchNetwork(C=4, num_classes=3, layers=3, in_channels=3)


def autodeeplab_network():
    return AutoDeepLabSearchNetwork(3, layers=2, blocks=2, filter_multiplier=2, in_channels=3)


def test_autocast_cast_traces_under_torch_compile_fullgraph():
    """dynamo traces the autocast check of the fused ops, inside and outside autocast (torch
    2.11's dynamo cannot trace torch.amp.is_autocast_available, which the check called)."""
    inputs = [torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4).bfloat16()]
    weights = torch.softmax(torch.randn(2), 0)
    compiled = torch.compile(ops.mixed_sum, fullgraph=True, backend="eager")
    with bf16_autocast():
        out = compiled(inputs, weights)
    assert out.dtype == torch.bfloat16
    assert rel_err(out, reference.mixed_sum([x.bfloat16() for x in inputs], weights)) <= BF16
    exact = [x.float() for x in inputs]
    assert torch.equal(compiled(exact, weights), ops.mixed_sum(exact, weights))


@pytest.mark.parametrize("make", [darts_network, autodeeplab_network], ids=["darts", "autodeeplab"])
def test_fused_network_equals_reference_under_bf16_autocast(make):
    """Whole supernets: the fused and reference backends agree within bfloat16 precision.

    The output agrees within twice the kernels' bfloat16 tolerance. Gradients back-propagated
    through a whole bfloat16 network (BatchNorm over a batch of 4) are far from their float32
    values for either backend, so each gradient (each architecture tensor, all the weights as one
    vector) must agree between the backends about as well as the reference agrees with float32.
    """
    torch.manual_seed(0)
    model = make()
    inputs = torch.randn(4, 3, 16, 16)
    arch = list(model.arch_parameters())
    weights = list(model.weight_parameters())

    def run(backend, autocast):
        model.backend = backend
        with autocast:
            out = model(inputs)
        grads = torch.autograd.grad((out.float() * torch.linspace(-1, 1, out.numel()).view(out.shape)).sum(),
                                    arch + weights, allow_unused=True, materialize_grads=True)
        flat_weight_grads = torch.cat([g.flatten() for g in grads[len(arch):]])
        return [out.float(), *grads[: len(arch)], flat_weight_grads], grads

    (fused, fused_grads), (ref, _) = run("fused", bf16_autocast()), run("reference", bf16_autocast())
    exact, _ = run("reference", torch.autocast("cpu", enabled=False))  # float32
    assert all(g.dtype == torch.float32 for g in fused_grads)  # parameter gradients stay float32
    assert rel_err(fused[0], ref[0]) <= 2 * BF16
    for f, r, e in zip(fused[1:], ref[1:], exact[1:], strict=True):
        assert rel_err(f, r) <= 1.5 * rel_err(r, e) + 1e-3
    # In float32 the two backends agree to rounding: the spread above is bfloat16's, not the kernels'.
    fused32, _ = run("fused", torch.autocast("cpu", enabled=False))
    assert max(rel_err(f, e) for f, e in zip(fused32, exact)) <= 1e-4


TINY_DARTS = ["--dataset", "synthetic", "--init-channels", "2", "--layers", "2", "--batch-size", "32", "--device",
              "cpu", "--threads", "1", "--epochs", "1"]
TINY_AUTODEEPLAB = ["--layers", "2", "--blocks", "2", "--filter-multiplier", "2", "--batch-size", "4", "--device",
                    "cpu", "--threads", "1", "--epochs", "1", "--arch-start-epoch", "0"]


@pytest.fixture
def no_pictures(monkeypatch):
    import fastdnas.viz

    for plot in ("plot_genotype", "plot_alpha_history", "plot_trellis", "plot_cell"):
        monkeypatch.setattr(fastdnas.viz, plot, lambda *args, **kwargs: None)


@pytest.mark.parametrize("space, flags", [("darts", TINY_DARTS + ["--unrolled"]), ("autodeeplab", TINY_AUTODEEPLAB)])
def test_bf16_search_runs_on_cpu(tmp_path, no_pictures, space, flags):
    assert cli.main(["search", space, *flags, "--amp", "bf16", "--out", str(tmp_path)]) == 0
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert state["extra"]["settings"]["amp"] == "bf16" and state["config"]["amp"] == "bf16"
    (record,) = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor(record[k])) for k in ("train_loss", "val_loss"))
    # Parameters and both optimizers' states stay float32.
    assert all(a.dtype == torch.float32 for a in state["arch_parameters"])
    assert all(v.dtype == torch.float32 for v in state["model"].values() if v.is_floating_point())
    for optimizer in ("weight_optimizer", "arch_optimizer"):
        tensors = [v for s in state[optimizer]["state"].values() for k, v in s.items() if k != "step"]
        assert tensors and all(t.dtype == torch.float32 for t in tensors)


def test_bf16_retraining_runs_on_cpu(tmp_path):
    from fastdnas.darts import DARTS_V2

    genotype = tmp_path / "genotype.txt"
    genotype.write_text(repr(DARTS_V2) + "\n")
    out = tmp_path / "train"
    assert cli.main(["train", "darts", "--genotype", str(genotype), *TINY_DARTS, "--amp", "bf16", "--auxiliary",
                     "--out", str(out)]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["config"]["amp"] == "bf16" and 0 <= result["test_acc"] <= 1


@pytest.mark.parametrize("unrolled", [False, True])
def test_loss_scaling_leaves_the_architecture_step_unchanged(unrolled):
    """With a loss scale s the architect's gradients are s times the unscaled ones, and the step
    the GradScaler takes (dividing s out) is the unscaled step."""
    steps = {}
    for scale in (None, 2.0**12):
        torch.manual_seed(0)
        model = ToySearchModel(affine=True).double()
        optimizer = torch.optim.SGD(model.weight_parameters(), lr=0.1, momentum=0.9, weight_decay=3e-4)
        precision = MixedPrecision()
        if scale is not None:  # float64 arithmetic with fp16's loss scaling: isolates the scaling logic
            precision.scaler = torch.amp.GradScaler("cpu", init_scale=scale)
        architect = Architect(model, optimizer, unrolled=unrolled, precision=precision)
        batches = [(torch.randn(8, 6, dtype=torch.float64), torch.randint(0, 3, (8,))) for _ in range(2)]
        (train_x, train_y), (val_x, val_y) = batches
        grads = (architect.unrolled_grads(train_x, train_y, val_x, val_y) if unrolled
                 else architect.first_order_grads(val_x, val_y))
        architect.step(train_x, train_y, val_x, val_y)
        steps[scale] = (grads[0], model.alphas.detach().clone())
    (plain_grad, plain_alphas), (scaled_grad, scaled_alphas) = steps[None], steps[2.0**12]
    torch.testing.assert_close(scaled_grad, plain_grad * 2.0**12, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(scaled_alphas, plain_alphas, rtol=1e-12, atol=1e-14)


def test_fp16_overflow_skips_both_steps_and_backs_off(tmp_path):
    from distributed_scenarios import toy_search

    search = toy_search(amp="fp16", out_dir=tmp_path, epochs=1)
    assert search.precision.scaler.is_enabled()
    search.precision.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**120)  # overflows float16 gradients
    search.architect.precision = search.precision
    inputs, targets = search.train_data.batch(torch.arange(16))
    alphas = search.model.alphas.detach().clone()
    weights = [w.detach().clone() for w in search.weights]
    search.architect.step(inputs, targets, inputs, targets)
    search.weight_step(inputs, targets)
    assert torch.equal(alphas, search.model.alphas)
    assert all(torch.equal(a, b) for a, b in zip(weights, search.weights))
    assert search.precision.scaler.get_scale() == 2.0**119

    search.precision.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    search.architect.precision = search.precision
    search.run()  # a normal scale: the steps are taken, and the scale is saved for resuming
    assert not torch.equal(alphas, search.model.alphas)
    saved = load_checkpoint(tmp_path / "checkpoint.pt")["grad_scaler"]
    assert saved["scale"] == search.precision.scaler.get_scale()
    resumed = toy_search(amp="fp16", out_dir=tmp_path, epochs=1).resume()
    assert resumed.precision.scaler.get_scale() == saved["scale"]


def test_fp16_clip_with_arch_counts_the_last_architecture_gradient_unscaled_once(monkeypatch):
    """With clip_with_arch the clip norm holds the alphas' leftover gradient of the last
    architecture step (already unscaled) plus the weight step's: under fp16 only the new part is
    divided by the loss scale, so the leftover enters the norm as it is."""
    import fastdnas.search.loop as loop
    from distributed_scenarios import toy_search

    seen, real = [], loop.clip_grad_norm_

    def recording(params, *args, **kwargs):
        params = list(params)
        seen.append(params[-1].grad.detach().clone())  # the alphas come last
        return real(params, *args, **kwargs)

    monkeypatch.setattr(loop, "clip_grad_norm_", recording)
    leftover = torch.randn(2, 3)
    for with_leftover in (False, True):
        search = toy_search(amp="fp16", clip_with_arch=True)
        search.precision.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
        assert [tuple(a.shape) for a in search.model.arch_parameters()] == [tuple(leftover.shape)]
        if with_leftover:
            search.model.alphas.grad = leftover.clone()
        inputs, targets = search.train_data.batch(torch.arange(16))
        search.weight_step(inputs, targets)
        assert search.model.alphas.grad is None
    without, with_it = seen
    assert without.abs().sum() > 0  # the weight step's own alpha gradient is there too
    torch.testing.assert_close(with_it - without, leftover)
