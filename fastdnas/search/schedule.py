"""Learning-rate schedule, computed explicitly per epoch (no scheduler object to call at the wrong time)."""
import math


def cosine_lr(epoch, epochs, lr_max, lr_min=0.0):
    """Cosine annealing: ``lr_max`` at epoch 0, approaching ``lr_min`` at epoch ``epochs``.

    lr(e) = lr_min + (lr_max - lr_min) * (1 + cos(pi * e / epochs)) / 2 for e = 0 .. epochs-1.
    """
    if not 0 <= epoch < epochs:
        raise ValueError(f"epoch must be in [0, {epochs}), got {epoch}")
    return lr_min + 0.5 * (lr_max - lr_min) * (1 + math.cos(math.pi * epoch / epochs))


def set_lr(optimizer, lr):
    for group in optimizer.param_groups:
        group["lr"] = lr
