"""The call sequence of the original DARTS search scripts, in today's torch: the architect of
architect.py (first and second order) and the step of train_search.py. It touches a network only
through what those scripts touch (``_loss``, ``parameters()``, ``named_parameters()``,
``state_dict()``, ``load_state_dict``, ``new()``, ``arch_parameters()``, ``.cuda()``, the optimizer's
momentum buffers), in their order, so a network that passes through it passes through them.
"""
import torch
import torch.nn as nn


def flat(tensors):
    return torch.cat([t.reshape(-1) for t in tensors])


class Architect:
    def __init__(self, model, momentum=0.9, weight_decay=3e-4, arch_lr=3e-4, arch_weight_decay=1e-3):
        self.network_momentum = momentum
        self.network_weight_decay = weight_decay
        self.model = model
        self.optimizer = torch.optim.Adam(model.arch_parameters(), lr=arch_lr, betas=(0.5, 0.999),
                                          weight_decay=arch_weight_decay)

    def step(self, input_train, target_train, input_valid, target_valid, eta, network_optimizer, unrolled):
        self.optimizer.zero_grad()
        if unrolled:
            self._backward_step_unrolled(input_train, target_train, input_valid, target_valid, eta, network_optimizer)
        else:
            self.model._loss(input_valid, target_valid).backward()
        self.optimizer.step()

    def _compute_unrolled_model(self, input, target, eta, network_optimizer):
        loss = self.model._loss(input, target)
        theta = flat(self.model.parameters()).data
        buffers = [network_optimizer.state[v].get("momentum_buffer") for v in self.model.parameters()]
        if any(b is None for b in buffers):
            moment = torch.zeros_like(theta)
        else:
            moment = flat(buffers).mul_(self.network_momentum)
        dtheta = flat(torch.autograd.grad(loss, list(self.model.parameters()))).data
        dtheta = dtheta + self.network_weight_decay * theta
        return self._construct_model_from_theta(theta.sub(moment + dtheta, alpha=eta))

    def _backward_step_unrolled(self, input_train, target_train, input_valid, target_valid, eta, network_optimizer):
        unrolled_model = self._compute_unrolled_model(input_train, target_train, eta, network_optimizer)
        unrolled_model._loss(input_valid, target_valid).backward()
        dalpha = [v.grad for v in unrolled_model.arch_parameters()]
        vector = [v.grad.data for v in unrolled_model.parameters()]
        implicit_grads = self._hessian_vector_product(vector, input_train, target_train)
        for g, ig in zip(dalpha, implicit_grads):
            g.data.sub_(ig.data, alpha=eta)
        for v, g in zip(self.model.arch_parameters(), dalpha):
            if v.grad is None:
                v.grad = g.data.clone()
            else:
                v.grad.data.copy_(g.data)

    def _construct_model_from_theta(self, theta):
        model_new = self.model.new()
        model_dict = self.model.state_dict()
        params, offset = {}, 0
        for k, v in self.model.named_parameters():
            params[k] = theta[offset: offset + v.numel()].view(v.size())
            offset += v.numel()
        assert offset == len(theta)
        model_dict.update(params)
        model_new.load_state_dict(model_dict)
        return model_new.cuda() if torch.cuda.is_available() and theta.is_cuda else model_new

    def _hessian_vector_product(self, vector, input, target, r=1e-2):
        R = r / flat(vector).norm()
        for p, v in zip(self.model.parameters(), vector):
            p.data.add_(v, alpha=R)
        grads_p = torch.autograd.grad(self.model._loss(input, target), self.model.arch_parameters())
        for p, v in zip(self.model.parameters(), vector):
            p.data.sub_(v, alpha=2 * R)
        grads_n = torch.autograd.grad(self.model._loss(input, target), self.model.arch_parameters())
        for p, v in zip(self.model.parameters(), vector):
            p.data.add_(v, alpha=R)
        return [(x - y).div_(2 * R) for x, y in zip(grads_p, grads_n)]


def search_step(model, architect, optimizer, criterion, train_batch, valid_batch, lr, unrolled, grad_clip=5.0):
    """One step of train_search.py's train(): the architecture step on the val batch, then the
    weight step on the train batch, gradients clipped."""
    model.train()
    (input, target), (input_search, target_search) = train_batch, valid_batch
    architect.step(input, target, input_search, target_search, lr, optimizer, unrolled=unrolled)
    optimizer.zero_grad()
    logits = model(input)
    loss = criterion(logits, target)
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    return logits, loss


def make_search(model, lr=0.025, momentum=0.9, weight_decay=3e-4):
    """train_search.py's main(): the weight optimizer over model.parameters(), then the architect."""
    optimizer = torch.optim.SGD(model.parameters(), lr, momentum=momentum, weight_decay=weight_decay)
    return optimizer, Architect(model, momentum, weight_decay)
