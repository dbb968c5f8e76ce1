"""Published DARTS-space cells by name, as the papers' code releases them (their ``genotypes.py``).

``fastdnas.darts.genotypes.DARTS_V2`` and so on (``DARTS_minus`` is DARTS-'s cell); ``PUBLISHED`` maps each name to a
``Published`` record (the genotype, the paper, the file it is taken from and the parameter
counts the paper reports for it, in millions, of the CIFAR-10 network (C=36, 20 cells) and the
ImageNet mobile network (C=48, 14 cells), auxiliary heads not counted; None where the paper
gives none). ``fastdnas genotypes`` lists them; ``--genotype NAME`` takes any of them.
"""
from collections import namedtuple

from .genotype import DARTS_V1, DARTS_V2, Genotype

Published = namedtuple("Published", "genotype paper source cifar_params imagenet_params")

PC_DARTS_cifar = Genotype(
    normal=[('sep_conv_3x3', 1), ('skip_connect', 0), ('sep_conv_3x3', 0), ('dil_conv_3x3', 1),
            ('sep_conv_5x5', 0), ('sep_conv_3x3', 1), ('avg_pool_3x3', 0), ('dil_conv_3x3', 1)],
    normal_concat=range(2, 6),
    reduce=[('sep_conv_5x5', 1), ('max_pool_3x3', 0), ('sep_conv_5x5', 1), ('sep_conv_5x5', 2),
            ('sep_conv_3x3', 0), ('sep_conv_3x3', 3), ('sep_conv_3x3', 1), ('sep_conv_3x3', 2)],
    reduce_concat=range(2, 6),
)
PC_DARTS_image = Genotype(
    normal=[('skip_connect', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 0), ('skip_connect', 1),
            ('sep_conv_3x3', 1), ('sep_conv_3x3', 3), ('sep_conv_3x3', 1), ('dil_conv_5x5', 4)],
    normal_concat=range(2, 6),
    reduce=[('sep_conv_3x3', 0), ('skip_connect', 1), ('dil_conv_5x5', 2), ('max_pool_3x3', 1),
            ('sep_conv_3x3', 2), ('sep_conv_3x3', 1), ('sep_conv_5x5', 0), ('sep_conv_3x3', 3)],
    reduce_concat=range(2, 6),
)
PDARTS = Genotype(
    normal=[('skip_connect', 0), ('dil_conv_3x3', 1), ('skip_connect', 0), ('sep_conv_3x3', 1),
            ('sep_conv_3x3', 1), ('sep_conv_3x3', 3), ('sep_conv_3x3', 0), ('dil_conv_5x5', 4)],
    normal_concat=range(2, 6),
    reduce=[('avg_pool_3x3', 0), ('sep_conv_5x5', 1), ('sep_conv_3x3', 0), ('dil_conv_5x5', 2),
            ('max_pool_3x3', 0), ('dil_conv_3x3', 1), ('dil_conv_3x3', 1), ('dil_conv_5x5', 3)],
    reduce_concat=range(2, 6),
)
# The release writes GDAS's nodes as pairs of (op, input) pairs; flattened here, node by node.
GDAS_V1 = Genotype(
    normal=[('skip_connect', 0), ('skip_connect', 1), ('skip_connect', 0), ('sep_conv_5x5', 2),
            ('sep_conv_3x3', 3), ('skip_connect', 0), ('sep_conv_5x5', 4), ('sep_conv_3x3', 3)],
    normal_concat=[2, 3, 4, 5],
    reduce=[('sep_conv_5x5', 0), ('sep_conv_3x3', 1), ('sep_conv_5x5', 2), ('sep_conv_5x5', 1),
            ('dil_conv_5x5', 2), ('sep_conv_3x3', 1), ('sep_conv_5x5', 0), ('sep_conv_5x5', 1)],
    reduce_concat=[2, 3, 4, 5],
)
DrNAS_cifar10 = Genotype(
    normal=[('sep_conv_3x3', 0), ('sep_conv_5x5', 1), ('sep_conv_3x3', 1), ('sep_conv_3x3', 2),
            ('skip_connect', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 2), ('dil_conv_5x5', 3)],
    normal_concat=range(2, 6),
    reduce=[('max_pool_3x3', 0), ('sep_conv_5x5', 1), ('dil_conv_5x5', 2), ('sep_conv_5x5', 1),
            ('sep_conv_5x5', 1), ('dil_conv_5x5', 3), ('skip_connect', 4), ('sep_conv_5x5', 1)],
    reduce_concat=range(2, 6),
)
DrNAS_imagenet = Genotype(
    normal=[('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1),
            ('sep_conv_3x3', 0), ('dil_conv_3x3', 3), ('skip_connect', 0), ('sep_conv_3x3', 1)],
    normal_concat=range(2, 6),
    reduce=[('max_pool_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('skip_connect', 2),
            ('sep_conv_3x3', 0), ('sep_conv_3x3', 2), ('sep_conv_3x3', 3), ('sep_conv_3x3', 1)],
    reduce_concat=range(2, 6),
)

# SDARTS's cells of the DARTS space (its "s5"): random smoothing (RS) and adversarial (ADV).
SDARTS_RS = Genotype(
    normal=[('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_5x5', 1), ('skip_connect', 0),
            ('sep_conv_3x3', 3), ('skip_connect', 1), ('sep_conv_3x3', 1), ('dil_conv_3x3', 2)],
    normal_concat=range(2, 6),
    reduce=[('max_pool_3x3', 0), ('sep_conv_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 0),
            ('dil_conv_5x5', 3), ('max_pool_3x3', 0), ('sep_conv_3x3', 2), ('sep_conv_5x5', 3)],
    reduce_concat=range(2, 6),
)
SDARTS_ADV = Genotype(
    normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 1), ('skip_connect', 0),
            ('sep_conv_5x5', 0), ('dil_conv_3x3', 3), ('dil_conv_3x3', 4), ('skip_connect', 0)],
    normal_concat=range(2, 6),
    reduce=[('max_pool_3x3', 0), ('sep_conv_5x5', 1), ('skip_connect', 2), ('max_pool_3x3', 0),
            ('skip_connect', 3), ('skip_connect', 2), ('skip_connect', 2), ('sep_conv_5x5', 4)],
    reduce_concat=range(2, 6),
)
# DARTS-'s best CIFAR-10 cell of the DARTS space.
DARTS_minus = Genotype(
    normal=[('sep_conv_3x3', 0), ('sep_conv_5x5', 1), ('sep_conv_3x3', 1), ('dil_conv_3x3', 2),
            ('skip_connect', 1), ('sep_conv_3x3', 0), ('skip_connect', 1), ('sep_conv_3x3', 0)],
    normal_concat=range(2, 6),
    reduce=[('sep_conv_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 0),
            ('skip_connect', 2), ('skip_connect', 3), ('skip_connect', 2), ('skip_connect', 3)],
    reduce_concat=range(2, 6),
)

_DARTS = ("DARTS (Liu, Simonyan and Yang, ICLR 2019)", "github.com/quark0/darts cnn/genotypes.py")
_PC_DARTS = ("PC-DARTS (Xu et al., ICLR 2020)", "github.com/yuhuixu1993/PC-DARTS genotypes.py")
_SDARTS = "SDARTS (Chen and Hsieh, ICML 2020)"
_SDARTS_FILE = "github.com/xiangning-chen/SmoothDARTS sota/cnn/genotypes.py"
_DRNAS = ("DrNAS (Chen et al., ICLR 2021)", "github.com/xiangning-chen/DrNAS DARTS-space/genotypes.py")
PUBLISHED = {
    "DARTS_V1": Published(DARTS_V1, *_DARTS, 3.3, None),  # first-order search
    "DARTS_V2": Published(DARTS_V2, *_DARTS, 3.3, 4.7),  # second-order search
    "PC_DARTS_cifar": Published(PC_DARTS_cifar, *_PC_DARTS, 3.6, None),
    "PC_DARTS_image": Published(PC_DARTS_image, *_PC_DARTS, None, 5.3),  # searched on ImageNet
    "PDARTS": Published(PDARTS, "P-DARTS (Chen et al., ICCV 2019)", "github.com/chenxin061/pdarts genotypes.py",
                        3.4, 4.9),
    "GDAS_V1": Published(GDAS_V1, "GDAS (Dong and Yang, CVPR 2019)",
                         "github.com/D-X-Y/AutoDL-Projects lib/nas_infer_model/DXYs/genotypes.py", 3.4, None),
    "DrNAS_cifar10": Published(DrNAS_cifar10, *_DRNAS, None, None),
    "DrNAS_imagenet": Published(DrNAS_imagenet, *_DRNAS, None, 5.7),  # searched on ImageNet
    "SDARTS_RS": Published(SDARTS_RS, _SDARTS, f"{_SDARTS_FILE} (c10_s5_random)", None, None),
    "SDARTS_ADV": Published(SDARTS_ADV, _SDARTS, f"{_SDARTS_FILE} (c10_s5_pgd)", 3.3, None),
    "DARTS_minus": Published(DARTS_minus, "DARTS- (Chu et al., ICLR 2021)",
                             "github.com/Meituan-AutoML/DARTS- src/eval/genotypes.py (cifar10_s0_best)", 3.5, 4.9),
}
# The other names the releases give the same cells.
ALIASES = {"DARTS": "DARTS_V2", "PCDARTS": "PC_DARTS_cifar"}


def published_genotype(name):
    """The published Genotype called ``name`` (a key of ``PUBLISHED`` or ``ALIASES``)."""
    key = ALIASES.get(name, name)
    if key not in PUBLISHED:
        raise ValueError(f"no published genotype {name!r}; known: {', '.join(list(PUBLISHED) + list(ALIASES))}")
    return PUBLISHED[key].genotype


def resolve_genotype(spec):
    """A published name (``DARTS_V2``), else a genotype file in any form ``load_genotype`` reads."""
    from .genotype import load_genotype

    if ALIASES.get(spec, spec) in PUBLISHED:
        return published_genotype(spec)
    return load_genotype(spec)
