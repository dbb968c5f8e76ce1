"""The search step of a ``Search`` replayed from CUDA graphs.

An eager DARTS step launches tens of thousands of small kernels; on a fast GPU the launches, not
the arithmetic, set the pace. Captured once into CUDA graphs, a step is two graph launches: the
architecture step (forward, backward and Adam on the val batch; the unrolled step too) and the
weight step (forward, backward, gradient clipping and SGD on the train batch).

What capture requires, and how it is met:
- Fixed addresses: batches are copied into static input buffers; the graphs' outputs (loss,
  logits) are static tensors, read by the caller before the next step.
- No host synchronisation: clipping keeps its norm on the device (``clip_grad_norm_``, foreach),
  Adam runs with ``capturable=True`` (its step count on the device), and the weight learning
  rate, which changes every epoch, is a device tensor the graph reads (``fill_`` when it changes;
  fused SGD takes a tensor learning rate). Losses and accuracies stay on the device.
- Warm-up on a side stream before capture (lazy optimizer state, library handles, algorithm
  choice): the first ``warmup_steps`` calls of each part run eagerly there. They are real steps
  of the search, so nothing is lost or repeated.
"""
import warnings

import torch


class _Part:
    """One captured piece of the step (the architecture step or the weight step)."""

    def __init__(self, run):
        self.run = run  # () -> outputs, reading the static inputs
        self.graph = None
        self.outputs = None
        self.eager_calls = 0


class GraphedSearchStep:
    """``search.search_step`` from CUDA graphs: ``step(inputs, targets, val_inputs, val_targets,
    update_arch)`` returns the weight step's (loss, logits), like the eager step, as static
    tensors that the next call overwrites.

    Results equal the eager step's within float rounding (fused SGD and capturable Adam instead of
    their other implementations). The batch shapes must stay those of the first call (the loop
    drops the last partial batch). Created by ``Search(..., cuda_graphs=True)``; the optimizers are
    switched to their capturable forms at the first call, after any ``load_state_dict``.
    """

    def __init__(self, search, warmup_steps=3):
        device = search.device
        if device.type != "cuda":
            raise ValueError(f"cuda_graphs: CUDA graphs need a CUDA device, but the search runs on {device}")
        if not torch.cuda.is_available():
            raise ValueError("cuda_graphs: CUDA is not available on this machine")
        if warmup_steps < 1:
            raise ValueError(f"cuda_graphs: warmup_steps must be >= 1, got {warmup_steps}")
        self.search = search
        self.device = device
        self.warmup_steps = warmup_steps
        self.static = None  # [inputs, targets, val_inputs, val_targets] at fixed addresses
        self.learning_rates = None  # one device tensor per weight-optimizer group
        self.learning_rate_values = None  # what they hold, as host numbers
        # Both graphs share one memory pool. That is safe here because no graph reads pool memory
        # written by the other: each replay recomputes every temporary it uses, and its outputs
        # (loss, logits, gradients) are consumed before the next replay of either graph.
        self.pool = None
        self.parts = {"arch": _Part(self._arch_step), "weight": _Part(self._weight_step)}
        self.side_stream = None

    def __call__(self, inputs, targets, val_inputs, val_targets, update_arch=True):
        if self.static is None:
            self._prepare([inputs, targets, val_inputs, val_targets])
        for buffer, batch, name in zip(self.static, (inputs, targets, val_inputs, val_targets),
                                       ("inputs", "targets", "val_inputs", "val_targets")):
            if batch.shape != buffer.shape or batch.dtype != buffer.dtype:
                raise ValueError(f"cuda_graphs: {name} has shape {list(batch.shape)} and dtype {batch.dtype}, but "
                                 f"the graphs were captured for {list(buffer.shape)} and {buffer.dtype}")
            buffer.copy_(batch, non_blocking=True)
        self._update_learning_rates()
        if update_arch:
            self._run(self.parts["arch"])
        return self._run(self.parts["weight"])

    @property
    def captured(self):
        """Names of the parts replayed from graphs so far ("arch", "weight")."""
        return [name for name, part in self.parts.items() if part.graph is not None]

    def _prepare(self, batch):
        """Static buffers, and the optimizers in the forms that can be captured."""
        self.static = [torch.empty_like(t, device=self.device) for t in batch]
        weight_groups = self.search.weight_optimizer.param_groups
        for group in weight_groups:
            # Fused SGD reads a tensor learning rate on the device (the foreach path would read it
            # back to the host); it is handed to the optimizer only while capturing.
            group["fused"], group["foreach"] = True, False
        self.learning_rate_values = [float(group["lr"]) for group in weight_groups]
        self.learning_rates = [torch.tensor(lr, dtype=torch.float32, device=self.device)
                               for lr in self.learning_rate_values]
        arch_optimizer = self.search.architect.optimizer
        for group in arch_optimizer.param_groups:
            group["capturable"] = True
        for state in arch_optimizer.state.values():  # a resumed run: the step counts come from the host
            if "step" in state:
                state["step"] = state["step"].to(device=self.device, dtype=torch.float32)
        self.side_stream = torch.cuda.Stream(self.device)

    def _update_learning_rates(self):
        """Copy the optimizer's learning rates (the loop sets host numbers) to the device tensors."""
        for i, group in enumerate(self.search.weight_optimizer.param_groups):
            value = float(group["lr"])
            if value != self.learning_rate_values[i]:
                self.learning_rates[i].fill_(value)
                self.learning_rate_values[i] = value

    def _arch_step(self):
        inputs, targets, val_inputs, val_targets = self.static
        self.search.architect.step(inputs, targets, val_inputs, val_targets)

    def _weight_step(self):
        inputs, targets = self.static[:2]
        return self.search.weight_step(inputs, targets)

    def _run(self, part):
        if part.graph is not None:
            part.graph.replay()
            return part.outputs
        if part.eager_calls < self.warmup_steps:
            part.eager_calls += 1
            return self._run_on_side_stream(part)
        self._capture(part)
        part.graph.replay()  # capture records the step without running it
        return part.outputs

    def _run_on_side_stream(self, part):
        """An eager step on the side stream, as the CUDA-graph warm-up must be."""
        current = torch.cuda.current_stream(self.device)
        self.side_stream.wait_stream(current)
        with torch.cuda.stream(self.side_stream), warnings.catch_warnings():
            # Adam warns once that capturable=True runs slower uncaptured: true only for these steps.
            warnings.filterwarnings("ignore", message=".*capturable=True.*")
            outputs = part.run()
        current.wait_stream(self.side_stream)
        if outputs is not None:
            for tensor in outputs:
                if isinstance(tensor, torch.Tensor):
                    tensor.record_stream(current)  # made on the side stream, read on this one
        return outputs

    def _capture(self, part):
        groups = self.search.weight_optimizer.param_groups
        host_learning_rates = [group["lr"] for group in groups]
        for group, lr in zip(groups, self.learning_rates):
            group["lr"] = lr  # the graph reads the learning rate from the device
        try:
            part.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(part.graph, pool=self.pool):
                part.outputs = part.run()
        except Exception:
            part.graph = None
            raise
        finally:
            for group, lr in zip(groups, host_learning_rates):
                group["lr"] = lr  # checkpoints and the schedule keep host numbers
        if self.pool is None:
            self.pool = part.graph.pool()
