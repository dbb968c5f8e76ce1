"""The architecture step of bilevel search: first order, or second order through one unrolled weight step."""
import weakref
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from ..precision import MixedPrecision


def cross_entropy_loss(model, inputs, targets):
    """Default loss: cross entropy of ``model(inputs)``; returns (loss, logits) so the loop can count accuracy."""
    logits = model(inputs)
    return F.cross_entropy(logits, targets), logits


def split_loss(result):
    """A loss function may return the loss alone or (loss, logits)."""
    if isinstance(result, (tuple, list)):
        return result[0], result[1]
    return result, None


@contextmanager
def differentiating(model, params):
    """Within it, of ``model``'s parameters only ``params`` require grad (the others are restored
    on exit): a forward run inside records no gradient path to the other parameters, so its
    backward computes none of their gradients (no weight-gradient kernels in an architecture pass,
    no alpha-gradient sums in a weight pass). The values computed are the same."""
    keep = {id(p) for p in params}
    frozen = [p for p in _parameters_of(model) if p.requires_grad and id(p) not in keep]
    for p in frozen:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in frozen:
            p.requires_grad_(True)


# model.parameters() walks every module in Python (thousands in a supernet, twice a step): the
# list is kept per model and made again once any module or parameter was registered anywhere
# since. A parameter that left the model some other way (``del``) is only toggled and restored
# needlessly, and one it gained that way only keeps its gradient path: either way the same values.
_registrations = [0]
_parameter_lists = weakref.WeakKeyDictionary()


def _count_registration(*args):
    _registrations[0] += 1


torch.nn.modules.module.register_module_module_registration_hook(_count_registration)
torch.nn.modules.module.register_module_parameter_registration_hook(_count_registration)


def _parameters_of(model):
    kept = _parameter_lists.get(model)
    if kept is None or kept[0] != _registrations[0]:
        kept = _parameter_lists[model] = (_registrations[0], list(model.parameters()))
    return kept[1]


class Architect:
    """Updates the architecture parameters with Adam on validation batches.

    The weights it differentiates through (second order) are exactly those the weight optimizer
    updates; the architecture parameters never appear among them.

    Data-parallel runs pass ``average_gradients``, which replaces a list of gradients by their
    mean over the ranks in place: it is applied to the weight gradients of the virtual step, to
    the validation gradient v of the unrolled weights, and to the final architecture gradient,
    so every rank takes the same step. ``precision`` (a ``MixedPrecision``) runs the forward
    passes under autocast; with fp16 the losses are scaled and the Adam step goes through its
    GradScaler (skipped if a gradient overflowed), whose ``update()`` the caller makes once per
    iteration.
    """

    def __init__(self, model, weight_optimizer, loss_fn=cross_entropy_loss, lr=3e-4, betas=(0.5, 0.999),
                 weight_decay=1e-3, unrolled=False, average_gradients=None, precision=None, fused=False,
                 plain_virtual_step=False):
        self.model = model
        self.loss_fn = loss_fn
        self.unrolled = unrolled
        self.average_gradients = average_gradients or (lambda grads: grads)
        self.precision = precision or MixedPrecision()
        self.weight_optimizer = weight_optimizer
        self.arch_params = list(model.arch_parameters())
        self.weights = [p for group in weight_optimizer.param_groups for p in group["params"]]
        arch_ids = {id(p) for p in self.arch_params}
        if any(id(p) in arch_ids for p in self.weights):
            raise ValueError("the weight optimizer must not hold architecture parameters")
        # plain_virtual_step: the virtual step is plain momentum SGD even where the real one is
        # Nesterov's (the NAS-Bench-201 authors' second-order DARTS).
        if unrolled and not plain_virtual_step:
            for group in weight_optimizer.param_groups:
                if group.get("nesterov") or group.get("dampening", 0) != 0:
                    raise ValueError("the unrolled step models plain SGD momentum: no nesterov, no dampening")
        kind = {"fused": True} if fused else {"foreach": True}  # fused: one kernel per step (CUDA)
        self.optimizer = torch.optim.Adam(self.arch_params, lr=lr, betas=betas, weight_decay=weight_decay, **kind)

    def loss(self, inputs, targets):
        """The loss on one batch, times the fp16 loss scale when there is one."""
        with self.precision.autocast():
            loss = split_loss(self.loss_fn(self.model, inputs, targets))[0]
        return self.precision.scaler.scale(loss)

    def step(self, train_inputs, train_targets, val_inputs, val_targets):
        """One Adam step on the architecture parameters (the weights are left as they were)."""
        if self.unrolled:
            grads = self.unrolled_grads(train_inputs, train_targets, val_inputs, val_targets)
        else:
            grads = self.first_order_grads(val_inputs, val_targets)
        grads = self.add_regulariser(grads)
        self.average_gradients(grads)
        self.optimizer.zero_grad(set_to_none=True)
        for p, g in zip(self.arch_params, grads):
            p.grad = g
        self.precision.scaler.step(self.optimizer)  # without fp16: optimizer.step()

    def add_regulariser(self, grads):
        """grads + d(regulariser)/dalpha where the model has a term of the architecture loss
        (``arch_regulariser()``, a function of the architecture parameters alone); scaled as the loss."""
        term = getattr(self.model, "arch_regulariser", None)
        term = term() if term is not None else None
        if term is None:
            return grads
        return torch._foreach_add(grads, self.grad(self.precision.scaler.scale(term), self.arch_params))

    def first_order_grads(self, val_inputs, val_targets):
        """dL_val(w, alpha) / dalpha (its forward updates BatchNorm running statistics, as in DARTS)."""
        return self.grad_of(self.arch_params, val_inputs, val_targets)

    def grad_of(self, params, inputs, targets):
        """Gradients of the loss on one batch w.r.t. ``params`` alone: the forward runs with the
        model's other parameters frozen, so no gradient of theirs is computed."""
        with differentiating(self.model, params):
            return self.grad(self.loss(inputs, targets), params)

    def unrolled_grads(self, train_inputs, train_targets, val_inputs, val_targets):
        """dL_val(w', alpha)/dalpha - eta * d2L_train(w, alpha)/dalpha dw . dL_val(w', alpha)/dw'.

        w' = w - eta * (momentum * buffer + dL_train/dw + wd * w) is one virtual SGD step, taken in
        place on the model's weights; the Hessian-vector product is a central finite difference
        around w with radius R = 0.01 / ||dL_val/dw'||. Weights and buffers (BatchNorm running
        statistics) are restored exactly before returning, so these extra forwards leave no trace.
        With a loss scale s every gradient here is s times the true one: the virtual step and the
        radius use the unscaled values, the returned gradient stays scaled (the GradScaler's step
        unscales it).
        """
        weights = self.weights
        saved_weights = [w.detach().clone() for w in weights]
        saved_buffers = [b.detach().clone() for b in self.model.buffers()]
        etas = {group["lr"] for group in self.weight_optimizer.param_groups}
        if len(etas) != 1:
            raise ValueError(f"the unrolled step needs one weight learning rate for all groups, got {sorted(etas)}")
        eta = etas.pop()
        inv_scale = 1.0 / self.precision.scaler.get_scale()  # exactly 1.0 without fp16

        train_grads = self.average_gradients(self.grad_of(weights, train_inputs, train_targets))
        self.virtual_step(torch._foreach_mul(train_grads, inv_scale))
        grads = self.grad_of(self.arch_params + weights, val_inputs, val_targets)
        alpha_grads, v = grads[: len(self.arch_params)], self.average_gradients(grads[len(self.arch_params) :])

        v_norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(v))) * inv_scale
        radius = 0.01 / v_norm.clamp_min(1e-12)
        step = torch._foreach_mul(v, radius * inv_scale)  # R * (unscaled v)
        with torch.no_grad():
            torch._foreach_copy_(weights, saved_weights)
            torch._foreach_add_(weights, step)  # w + R v
        grads_plus = self.grad_of(self.arch_params, train_inputs, train_targets)
        with torch.no_grad():
            torch._foreach_copy_(weights, saved_weights)
            torch._foreach_sub_(weights, step)  # w - R v
        grads_minus = self.grad_of(self.arch_params, train_inputs, train_targets)

        with torch.no_grad():
            torch._foreach_copy_(weights, saved_weights)
            for b, saved in zip(self.model.buffers(), saved_buffers):
                b.copy_(saved)
        # g - eta * (g+ - g-) / (2R)
        hessian = torch._foreach_sub(grads_plus, grads_minus)
        torch._foreach_mul_(hessian, eta / (2 * radius))
        return torch._foreach_sub(alpha_grads, hessian)

    @torch.no_grad()
    def virtual_step(self, train_grads):
        """w <- w - eta * (momentum * buffer + grad + wd * w), group by group, like the real SGD step."""
        start = 0
        for group in self.weight_optimizer.param_groups:
            params = group["params"]
            grads = train_grads[start : start + len(params)]
            start += len(params)
            direction = torch._foreach_add(grads, params, alpha=group["weight_decay"])
            momentum = group.get("momentum", 0)
            with_buffer = [(i, self.weight_optimizer.state[p]["momentum_buffer"]) for i, p in enumerate(params)
                           if momentum and self.weight_optimizer.state.get(p, {}).get("momentum_buffer") is not None]
            if with_buffer:
                indices, buffers = zip(*with_buffer)
                torch._foreach_add_([direction[i] for i in indices], list(buffers), alpha=momentum)
            lr = group["lr"]
            if isinstance(lr, torch.Tensor):  # a learning rate on the device (CUDA graphs): no host read
                torch._foreach_mul_(direction, lr)
                torch._foreach_sub_(params, direction)
            else:
                torch._foreach_add_(params, direction, alpha=-lr)

    @staticmethod
    def grad(loss, params):
        """Gradients of ``loss`` w.r.t. ``params``; zeros for parameters the loss does not use."""
        if not loss.requires_grad:  # it uses none of them
            return [torch.zeros_like(p) for p in params]
        return list(torch.autograd.grad(loss, params, allow_unused=True, materialize_grads=True))

    def state_dict(self):
        return self.optimizer.state_dict()

    def load_state_dict(self, state):
        self.optimizer.load_state_dict(state)
