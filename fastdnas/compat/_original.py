"""The interface of the original code's search networks (``model_search.Network``), shared by
the DARTS and PC-DARTS drop-ins.

As in the original code, the architecture tensors are plain leaf tensors (``requires_grad``),
not parameters: ``parameters()``, ``named_parameters()`` and ``state_dict()`` hold the network
weights alone, which the original architect relies on (it flattens ``parameters()`` into the
unrolled weight vector and copies ``state_dict()`` into the unrolled model).
"""
import gc

import torch


class OriginalInterface:
    """Mixed into a fastdnas search network; ``ARCH_NAMES`` names its architecture tensors, in the
    order of ``arch_parameters()``."""

    ARCH_NAMES = ()

    def _adopt_original_interface(self, criterion, stem_multiplier):
        self._C = self.C
        self._num_classes = self.num_classes
        self._layers = self.layers
        self._criterion = criterion
        self._steps = self.steps
        self._multiplier = self.multiplier
        self._stem_multiplier = stem_multiplier
        # The parameters registered by the fastdnas network become plain tensors with the same
        # values (the same draws from the random generator as the original makes).
        self._set_arch([self._parameters.pop(name).detach().requires_grad_() for name in self.ARCH_NAMES])

    def _set_arch(self, tensors):
        for name, tensor in zip(self.ARCH_NAMES, tensors):
            object.__setattr__(self, name, tensor)
        self._arch_parameters = list(tensors)

    def arch_parameters(self):
        return self._arch_parameters

    def _loss(self, input, target):
        logits = self(input)
        return self._criterion(logits, target)

    def new(self):
        """A network of the same configuration (fresh weights) with a copy of the architecture
        tensors, on this network's device and dtype (the unrolled model of the original architect).

        The original architect calls it every second-order step. Building the thousands of modules
        creates objects enough to start several of the garbage collector's full passes, each over
        every live object (this network, its tensors, the caller's): the collector is paused while
        the network is built and restored after, as it was, whatever happens (what it would have
        collected meanwhile it collects on its next pass). The move to this network's device and
        dtype, a walk over every module, is skipped where the new network already has them."""
        collecting = gc.isenabled()
        gc.disable()
        try:
            model_new = self._same_configuration()
        finally:
            if collecting:
                gc.enable()
        reference = self.arch_parameters()[0]
        built = model_new.arch_parameters()[0]
        if (built.device, built.dtype) != (reference.device, reference.dtype):
            model_new = model_new.to(device=reference.device, dtype=reference.dtype)
        for x, y in zip(model_new.arch_parameters(), self.arch_parameters()):
            x.data.copy_(y.data)
        return model_new

    def _apply(self, fn, *args, **kwargs):
        # .cuda(), .double(), .to(...) move the architecture tensors too (the original creates
        # them on the GPU); each stays a leaf, and stays the same object when nothing changes.
        super()._apply(fn, *args, **kwargs)
        moved = []
        for tensor in self._arch_parameters:
            with torch.no_grad():
                new = fn(tensor.detach())
            if new.device == tensor.device and new.dtype == tensor.dtype and new.data_ptr() == tensor.data_ptr():
                moved.append(tensor)
                continue
            new = new.clone().requires_grad_(tensor.requires_grad)
            if tensor.grad is not None:
                with torch.no_grad():
                    new.grad = fn(tensor.grad).clone()
            moved.append(new)
        self._set_arch(moved)
        return self

    def cuda(self, device=None):
        """As ``nn.Module.cuda``; on a machine without CUDA it leaves the network where it is, so the
        ``.cuda()`` calls of the original scripts (the architect's unrolled model) run on the CPU."""
        if not torch.cuda.is_available():
            return self
        return super().cuda(device)
