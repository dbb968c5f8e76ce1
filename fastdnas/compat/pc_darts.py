"""``Network``: the original PC-DARTS ``model_search.Network`` (partial channels K=4, edge
normalisation) on fastdnas's fused backends.

Replace ``from model_search import Network`` by ``from fastdnas.compat.pc_darts import Network``.
"""
from ..darts.pc_darts import PCDartsNetwork
from ..nn.operations import PRIMITIVES
from ._original import OriginalInterface


class Network(OriginalInterface, PCDartsNetwork):
    """``Network(C, num_classes, layers, criterion, steps=4, multiplier=4, stem_multiplier=3)``,
    as the original PC-DARTS; ``alphas_normal``, ``alphas_reduce``, ``betas_normal``,
    ``betas_reduce`` are plain tensors, ``arch_parameters()`` lists them in that order and
    ``new()`` copies all four. ``partial_channels`` (the original's fixed K=4), ``backend`` and
    ``in_channels`` are keyword only."""

    ARCH_NAMES = ("alphas_normal", "alphas_reduce", "betas_normal", "betas_reduce")

    def __init__(self, C, num_classes, layers, criterion, steps=4, multiplier=4, stem_multiplier=3, *,
                 partial_channels=4, backend="fused", in_channels=3, primitives=PRIMITIVES):
        super().__init__(C, num_classes, layers, steps, multiplier, stem_multiplier, backend=backend,
                         in_channels=in_channels, primitives=primitives, partial_channels=partial_channels)
        self._in_channels = in_channels
        self._adopt_original_interface(criterion, stem_multiplier)

    def _same_configuration(self):
        return type(self)(self._C, self._num_classes, self._layers, self._criterion, self._steps, self._multiplier,
                          self._stem_multiplier, partial_channels=self.partial_channels, backend=self.backend,
                          in_channels=self._in_channels, primitives=self.primitives)
