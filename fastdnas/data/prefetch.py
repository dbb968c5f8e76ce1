"""Moving batches to the device one step ahead of the loop that uses them."""
import torch


def map_tensors(fn, batch):
    """``batch`` with ``fn`` applied to every tensor in it (nested tuples and lists kept)."""
    if isinstance(batch, torch.Tensor):
        return fn(batch)
    if isinstance(batch, (tuple, list)):
        return type(batch)(map_tensors(fn, item) for item in batch)
    return batch


def pinned(tensor):
    """A page-locked copy of a host tensor (what makes a non-blocking copy truly asynchronous)."""
    return tensor.pin_memory() if tensor.device.type == "cpu" else tensor


class DevicePrefetcher:
    """Yields the batches of ``batches`` (tensors or nested tuples of them) on ``device``, preparing
    batch k + 1 before batch k is handed out.

    On CUDA a batch is pinned and copied with ``non_blocking=True`` on a side stream, so its
    preparation and transfer overlap the step running on the batch before it; the consumer's
    stream waits for the copy (an event on the device, not a host synchronisation). Elsewhere the
    batches pass through as they are (``.to(device)``). The order in which ``batches`` is drawn
    does not change, so the data of a seeded epoch stays the same.

    One prefetcher (and its copy stream) can serve every epoch: ``prefetch(batches)`` starts a
    new pass.
    """

    def __init__(self, device):
        self.device = torch.device(device)
        self.stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None

    def prefetch(self, batches):
        iterator = iter(batches)
        upcoming = self._start(next(iterator, None))
        while upcoming is not None:
            current = upcoming
            upcoming = self._start(next(iterator, None))  # batch k + 1 is on its way before batch k is used
            yield self._finish(current)

    def _start(self, batch):
        if batch is None or self.stream is None:
            return None if batch is None else (map_tensors(lambda t: t.to(self.device), batch), None)
        with torch.cuda.stream(self.stream):
            moved = map_tensors(lambda t: pinned(t).to(self.device, non_blocking=True), batch)
            ready = torch.cuda.Event()
            ready.record(self.stream)
        return moved, ready

    def _finish(self, started):
        batch, ready = started
        if ready is None:
            return batch
        stream = torch.cuda.current_stream(self.device)
        stream.wait_event(ready)

        def hand_over(tensor):
            # Allocated on the copy stream, used on the consumer's: keep the allocator from
            # reusing the memory before the consumer's work on it has run.
            tensor.record_stream(stream)
            return tensor

        return map_tensors(hand_over, batch)
