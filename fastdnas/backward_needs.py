"""Which input gradients the running backward pass needs, asked inside a custom op's backward.

``ctx.needs_input_grad`` is fixed when the forward runs: it says whether an input requires grad,
not whether the backward pass now running will use its gradient. ``torch.autograd.grad(loss,
alphas)`` (the Hessian-vector product of the second-order DARTS architect, in code that does not
switch the weights' ``requires_grad`` off around it) needs no weight gradient, yet every weight
requires grad; PyTorch's own convolutions skip such gradients (their backward asks the engine),
and ``engine_needs`` lets the custom ops do the same.
"""
import torch


def engine_needs(ctx, index):
    """Whether the backward pass running now needs the gradient of tensor input ``index`` of the
    op whose ``ctx`` this is (tensor inputs counted in order, each Tensor[] flattened into its
    elements, non-tensor arguments not counted: the order of ``ctx.next_functions``). True
    wherever the engine cannot tell (under torch.compile, or a leaf whose gradient
    ``torch.autograd.grad`` returns); False for an input that requires no grad."""
    if torch.compiler.is_compiling():
        return True
    node = ctx.next_functions[index][0]
    if node is None:  # the input requires no grad
        return False
    try:
        return torch._C._will_engine_execute_node(node)
    except RuntimeError:  # a leaf captured by torch.autograd.grad: its gradient is returned
        return True
