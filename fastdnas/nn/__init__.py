"""Drop-in supernet building blocks: candidate operations and the mixed op."""
from .mixed_op import BACKENDS, MixedOp
from .operations import FINAL_OPS, OPS, PRIMITIVES, DilConv, FactorizedReduce, Identity, ReLUConvBN, SepConv, Zero

__all__ = [
    "BACKENDS",
    "MixedOp",
    "OPS",
    "FINAL_OPS",
    "PRIMITIVES",
    "DilConv",
    "FactorizedReduce",
    "Identity",
    "ReLUConvBN",
    "SepConv",
    "Zero",
]
