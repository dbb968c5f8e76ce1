"""``Network``: the original DARTS ``model_search.Network`` on fastdnas's fused backends.

Replace ``from model_search import Network`` by ``from fastdnas.compat.darts import Network``.
"""
from ..darts.search_network import SearchNetwork
from ..nn.operations import PRIMITIVES
from ._original import OriginalInterface


class Network(OriginalInterface, SearchNetwork):
    """``Network(C, num_classes, layers, criterion, steps=4, multiplier=4, stem_multiplier=3)``,
    as the original; ``backend`` ("fused", "fused_sum", "reference") and ``in_channels`` are
    fastdnas's additions, keyword only. ``alphas_normal``/``alphas_reduce`` are plain tensors
    (not in ``parameters()`` or ``state_dict()``), as in the original."""

    ARCH_NAMES = ("alphas_normal", "alphas_reduce")

    def __init__(self, C, num_classes, layers, criterion, steps=4, multiplier=4, stem_multiplier=3, *,
                 backend="fused", in_channels=3, primitives=PRIMITIVES):
        super().__init__(C, num_classes, layers, steps, multiplier, stem_multiplier, backend=backend,
                         in_channels=in_channels, primitives=primitives)
        self._in_channels = in_channels
        self._adopt_original_interface(criterion, stem_multiplier)

    def _same_configuration(self):
        return type(self)(self._C, self._num_classes, self._layers, self._criterion, self._steps, self._multiplier,
                          self._stem_multiplier, backend=self.backend, in_channels=self._in_channels,
                          primitives=self.primitives)
