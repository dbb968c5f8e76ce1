"""The Auto-DeepLab head: atrous spatial pyramid pooling (ASPP) with three branches (SPEC.md section 4)."""
import torch
import torch.nn as nn


def _conv_bn_relu(C_in, C_out, kernel_size=1, dilation=1):
    padding = dilation * (kernel_size - 1) // 2  # keeps the spatial size
    return nn.Sequential(
        nn.Conv2d(C_in, C_out, kernel_size, padding=padding, dilation=dilation, bias=False),
        nn.BatchNorm2d(C_out),
        nn.ReLU(inplace=False),
    )


class ASPP(nn.Module):
    """DeepLabv3's ASPP reduced to the three branches Auto-DeepLab uses: a 1x1 conv, one 3x3 conv
    with dilation ``dilation``, and image pooling, each ``channels`` filters with BN and ReLU. As in
    DeepLabv3, their concat is projected by a 1x1 conv (BN, ReLU) and a last 1x1 conv (with bias)
    gives the logits, at the input's resolution.

    In training the image-pooling branch normalises one value per sample: use batches of 2 or more.
    """

    def __init__(self, in_channels, channels, dilation, num_classes):
        super().__init__()
        for name, value in [("in_channels", in_channels), ("channels", channels), ("dilation", dilation),
                            ("num_classes", num_classes)]:
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"ASPP: {name} must be a positive integer, got {value!r}")
        self.conv1x1 = _conv_bn_relu(in_channels, channels)
        self.conv3x3 = _conv_bn_relu(in_channels, channels, kernel_size=3, dilation=dilation)
        self.image_pooling = nn.Sequential(nn.AdaptiveAvgPool2d(1), _conv_bn_relu(in_channels, channels))
        self.project = _conv_bn_relu(3 * channels, channels)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x):
        # Bilinear upsampling of a 1x1 map is a broadcast: expand it.
        pooled = self.image_pooling(x).expand(-1, -1, *x.shape[-2:])
        features = torch.cat([self.conv1x1(x), self.conv3x3(x), pooled], dim=1)
        return self.classifier(self.project(features))


def level_rate(level):
    """Downsample rate of a trellis level: 4, 8, 16, 32 for levels 0..3."""
    return 4 * 2**level


def aspp_for_level(level, blocks, filter_multiplier, num_classes):
    """The paper's ASPP at a level of downsample rate s: dilation 96/s, B*F*s/4 filters per branch."""
    rate = level_rate(level)
    channels = blocks * filter_multiplier * rate // 4
    return ASPP(channels, channels, 96 // rate, num_classes)
