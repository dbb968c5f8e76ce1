"""Candidate operations of the DARTS search space (SPEC.md section 1).

The module structure (an inner ``op`` Sequential) mirrors the original DARTS code so that
parameter names map one to one.
"""
import torch
import torch.nn as nn

PRIMITIVES = (
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
)


class ReLUConvBN(nn.Module):
    def __init__(self, C_in, C_out, kernel_size, stride, padding, affine=True):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_out, kernel_size, stride=stride, padding=padding, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )

    def forward(self, x):
        return self.op(x)


class DilConv(nn.Module):
    """[ReLU, depthwise dilated conv, 1x1 conv, BN]."""

    def __init__(self, C_in, C_out, kernel_size, stride, padding, dilation, affine=True):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, kernel_size, stride, padding, dilation=dilation, groups=C_in, bias=False),
            nn.Conv2d(C_in, C_out, 1, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )

    def forward(self, x):
        return self.op(x)

    def pre_bn(self, x_relu):
        """The output before the final BatchNorm, from the already ReLU'd input."""
        return _run_layers(self.op, 1, len(self.op) - 1, x_relu)

    @property
    def output_bn(self):
        return next(reversed(self.op._modules.values()))  # op[-1] walks the Sequential: slow per forward


class SepConv(nn.Module):
    """[ReLU, depthwise conv, 1x1 conv, BN, ReLU, depthwise conv, 1x1 conv, BN]."""

    def __init__(self, C_in, C_out, kernel_size, stride, padding, affine=True):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, kernel_size, stride, padding, groups=C_in, bias=False),
            nn.Conv2d(C_in, C_in, 1, bias=False),
            nn.BatchNorm2d(C_in, affine=affine),
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, kernel_size, 1, padding, groups=C_in, bias=False),
            nn.Conv2d(C_in, C_out, 1, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )

    def forward(self, x):
        return self.op(x)

    def pre_bn(self, x_relu):
        """The output before the final BatchNorm, from the already ReLU'd input."""
        return _run_layers(self.op, 1, len(self.op) - 1, x_relu)

    @property
    def output_bn(self):
        return next(reversed(self.op._modules.values()))  # op[-1] walks the Sequential: slow per forward


def _run_layers(sequential, start, stop, x):
    """The layers [start, stop) of a candidate, as the fused backends run them (same parameters,
    same results up to float rounding): depthwise convolutions by the fastdnas kernel (its
    backward is several times faster than oneDNN's on the CPU), 1x1 convolutions as one batched
    matrix product (no layout reorders: 2.5-3x faster forward+backward at the DARTS sizes on the CPU)."""
    from .. import ops  # the compiled extension is needed only here (the fused backends)

    # Indexing (not slicing) keeps torch.compile from building Sequential objects.
    for i in range(start, stop):
        layer = sequential[i]
        if _is_pointwise(layer, stride=1):
            x = _pointwise_conv(x, layer.weight, layer.bias)
        elif _is_plain_conv(layer) and layer.groups == layer.in_channels == layer.out_channels:
            x = ops.depthwise_conv2d(x, layer.weight, layer.stride, layer.padding, layer.dilation)
        else:
            x = layer(x)
    return x


# Devices whose stacked 1x1 convolutions (fastdnas.nn.mixed_op._StackedPointwise) and cell
# preprocessing (run_fused) run as matrix products instead of convolutions: the CPU, where
# oneDNN's convolutions were 1.4-3.4x slower forward+backward at the DARTS sizes (its backward
# reorders the small groups). CUDA keeps cuDNN's convolutions (one op each way) until timed on a GPU.
POINTWISE_MATMUL_DEVICES = {"cpu"}


def run_fused(module, x):
    """``module(x)`` for a cell's preprocessing (ReLUConvBN, FactorizedReduce) as the fused backends
    run it on the ``POINTWISE_MATMUL_DEVICES``: its 1x1 convolutions as matrix products (7-8% of
    the DARTS step on the CPU); the same value up to rounding. Elsewhere, and for other modules:
    ``module(x)``."""
    if x.device.type not in POINTWISE_MATMUL_DEVICES:
        return module(x)
    if type(module) is ReLUConvBN:
        return _run_layers(module.op, 0, len(module.op), x)
    if type(module) is FactorizedReduce:
        return module.bn(module.pre_bn(module.relu(x)))
    return module(x)


def _is_plain_conv(layer):
    return (isinstance(layer, nn.Conv2d) and layer.bias is None and layer.padding_mode == "zeros"
            and not isinstance(layer.padding, str))


def _is_pointwise(layer, stride):
    """A dense 1x1 convolution of the given stride, no padding (a bias allowed)."""
    return (isinstance(layer, nn.Conv2d) and layer.groups == 1 and layer.kernel_size == (1, 1)
            and layer.stride == (stride, stride) and layer.padding == (0, 0))


def _pointwise_conv(x, weight, bias=None):
    """F.conv2d(x, weight, bias) for a [C_out, C_in, 1, 1] weight: weight @ x[n] (+ bias) for every n."""
    N, C, H, W = x.shape
    C_out = weight.shape[0]
    # bmm over an expanded (stride-0) weight: no copies either way, where matmul would transpose.
    w = weight.view(C_out, C).expand(N, C_out, C)
    x = x.reshape(N, C, H * W)
    out = torch.bmm(w, x) if bias is None else torch.baddbmm(bias.view(1, C_out, 1), w, x)
    return out.view(N, C_out, H, W)


class Identity(nn.Module):
    def forward(self, x):
        return x


class Zero(nn.Module):
    """The 'none' op: zeros of the output shape (a stride-2 subsample times 0)."""

    def __init__(self, stride):
        super().__init__()
        self.stride = stride

    def forward(self, x):
        if self.stride == 1:
            return x.mul(0.0)
        return x[:, :, :: self.stride, :: self.stride].mul(0.0)


class FactorizedReduce(nn.Module):
    """Halves the resolution with two offset 1x1 stride-2 convolutions (C_out must be even)."""

    def __init__(self, C_in, C_out, affine=True):
        super().__init__()
        if C_out % 2:
            raise ValueError(f"FactorizedReduce: C_out must be even, got {C_out}")
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, padding=0, bias=False)
        self.conv_2 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, padding=0, bias=False)
        self.bn = nn.BatchNorm2d(C_out, affine=affine)

    def forward(self, x):
        x = self.relu(x)
        self._check_even(x)
        return self.bn(self._conv_halves(x))

    def pre_bn(self, x_relu):
        """The output before the BatchNorm, from the already ReLU'd input, as the fused backends run
        it: on the ``POINTWISE_MATMUL_DEVICES`` each stride-2 1x1 convolution a matrix product over
        its subsampled grid; the same value up to rounding."""
        self._check_even(x_relu)
        if not (x_relu.device.type in POINTWISE_MATMUL_DEVICES and _is_pointwise(self.conv_1, stride=2)
                and _is_pointwise(self.conv_2, stride=2)):
            return self._conv_halves(x_relu)
        return torch.cat([_pointwise_conv(x_relu[:, :, ::2, ::2], self.conv_1.weight, self.conv_1.bias),
                          _pointwise_conv(x_relu[:, :, 1::2, 1::2], self.conv_2.weight, self.conv_2.bias)], dim=1)

    def _conv_halves(self, x):
        # The shifted branch starts at the second row/column; for even sizes both give H/2 x W/2.
        return torch.cat([self.conv_1(x), self.conv_2(x[:, :, 1:, 1:])], dim=1)

    @staticmethod
    def _check_even(x):
        if x.shape[-2] % 2 or x.shape[-1] % 2:
            raise ValueError(
                f"FactorizedReduce needs an even height and width, got {x.shape[-2]}x{x.shape[-1]} "
                "(a reduction cell halves the resolution; use input sizes divisible by 4)"
            )

    @property
    def output_bn(self):
        return self.bn


def _pool_bn(pool, C, affine):
    # Search mode: a parameter-free pool is followed by BN(affine=False) to match the scale of conv ops.
    return nn.Sequential(pool, nn.BatchNorm2d(C, affine=affine))


# name -> factory(C, stride, affine) for the search network (pools followed by BN).
OPS = {
    "none": lambda C, stride, affine: Zero(stride),
    "max_pool_3x3": lambda C, stride, affine: _pool_bn(nn.MaxPool2d(3, stride=stride, padding=1), C, affine),
    "avg_pool_3x3": lambda C, stride, affine: _pool_bn(
        nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False), C, affine
    ),
    "skip_connect": lambda C, stride, affine: Identity() if stride == 1 else FactorizedReduce(C, C, affine=affine),
    "sep_conv_3x3": lambda C, stride, affine: SepConv(C, C, 3, stride, 1, affine=affine),
    "sep_conv_5x5": lambda C, stride, affine: SepConv(C, C, 5, stride, 2, affine=affine),
    "dil_conv_3x3": lambda C, stride, affine: DilConv(C, C, 3, stride, 2, 2, affine=affine),
    "dil_conv_5x5": lambda C, stride, affine: DilConv(C, C, 5, stride, 4, 2, affine=affine),
}

# The final (retraining) network: pools without BN.
FINAL_OPS = dict(OPS)
FINAL_OPS["max_pool_3x3"] = lambda C, stride, affine: nn.MaxPool2d(3, stride=stride, padding=1)
FINAL_OPS["avg_pool_3x3"] = lambda C, stride, affine: nn.AvgPool2d(
    3, stride=stride, padding=1, count_include_pad=False
)
