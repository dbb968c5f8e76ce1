"""Atomic, checksummed checkpoints and the RNG states a run needs to resume exactly."""
import glob
import hashlib
import io
import os
import random
import tempfile
import warnings

import numpy as np
import torch


def rng_state():
    """Global RNG states of torch (CPU and CUDA), numpy and python, in a form torch.load(weights_only=True) accepts."""
    kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        # The current device's generator only: a data-parallel rank owns one GPU, and reading
        # every GPU's state would open a context on each of them.
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state):
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["kind"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        cuda_state = state["cuda"]
        if isinstance(cuda_state, (list, tuple)):  # older checkpoints: one state per visible GPU
            cuda_state = cuda_state[min(torch.cuda.current_device(), len(cuda_state) - 1)]
        torch.cuda.set_rng_state(cuda_state)


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used (damaged, or not a checkpoint); the message is one line naming it."""


class UnverifiedCheckpointError(CheckpointError):
    """A checkpoint whose content cannot be verified: it has no checksum, or its checksum trailer is damaged."""


class UnverifiedCheckpointWarning(UserWarning):
    """A checkpoint loaded without verification (``allow_unverified=True``); the message says why."""


# torch.save writes a zip archive, which ends with an end-of-central-directory record whose last
# two bytes give the length of an archive comment (none). The SHA-256 of that archive is stored
# as the comment: torch.load still reads the file, and flipped bytes anywhere are detected.
_END_RECORD = b"PK\x05\x06"
_END_RECORD_SIZE = 22
_CHECKSUM_TAG = b"fastdnas-sha256:"
_COMMENT_SIZE = len(_CHECKSUM_TAG) + 64
_TEMPORARY_PATTERN = ".checkpoint-*.tmp"


def _with_checksum(archive):
    end = archive[-_END_RECORD_SIZE:]
    if not (end.startswith(_END_RECORD) and end.endswith(b"\0\0")):
        raise RuntimeError("torch.save did not end its archive with a comment-less end record")
    comment = _CHECKSUM_TAG + hashlib.sha256(archive).hexdigest().encode()
    return archive[:-2] + len(comment).to_bytes(2, "little") + comment


def _split_checksum(data):
    """(the archive as torch.save wrote it, its recorded SHA-256 or None when there is none)."""
    comment = data[-_COMMENT_SIZE:]
    end = data[-_COMMENT_SIZE - _END_RECORD_SIZE:-_COMMENT_SIZE]
    if (comment.startswith(_CHECKSUM_TAG) and end.startswith(_END_RECORD)
            and end[-2:] == _COMMENT_SIZE.to_bytes(2, "little")):
        return data[:-_COMMENT_SIZE - 2] + b"\0\0", comment[len(_CHECKSUM_TAG):].decode("ascii", "replace")
    return data, None


def _unverified_reason(data):
    """Why ``data`` (which _split_checksum found no checksum in) cannot be verified."""
    if _CHECKSUM_TAG in data[-2 * (_COMMENT_SIZE + _END_RECORD_SIZE):]:
        return "its checksum at the end of the file is damaged: the file was cut or changed there"
    return "it has no checksum: written by torch.save or an older fastdnas, or its end is damaged"


def remove_stale_temporaries(folder):
    """Remove the temporary files of checkpoint writes that were killed before their rename."""
    for path in glob.glob(os.path.join(glob.escape(os.fspath(folder)), _TEMPORARY_PATTERN)):
        try:
            os.remove(path)
        except FileNotFoundError:
            pass


def save_checkpoint(state, path):
    """torch.save ``state`` to ``path`` atomically: a crash leaves the old checkpoint or the new one, never half.

    The file carries the SHA-256 of its content (load_checkpoint verifies it); leftovers of killed
    writes in the folder are removed first.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    remove_stale_temporaries(folder)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = _with_checksum(buffer.getvalue())
    fd, tmp_path = tempfile.mkstemp(prefix=".checkpoint-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise
    fsync_folder(folder)


def fsync_folder(folder):
    """Make the rename durable too (a no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _first_line(error):
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"[:200]


def load_checkpoint(path, map_location="cpu", keys=(), allow_unverified=False):
    """The state saved by save_checkpoint at ``path``, which must hold every name in ``keys``.

    Raises FileNotFoundError when there is no file, CheckpointError (one line naming the file)
    when it is empty, truncated, not a checkpoint, fails its checksum or lacks a key, and
    UnverifiedCheckpointError when it has no intact checksum (written by an older fastdnas, or
    cut or changed at its end, where the checksum is): only ``allow_unverified=True`` loads such a
    file, with an UnverifiedCheckpointWarning that says why it could not be verified.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {path!r} (nothing to resume)")
    with open(path, "rb") as f:
        data = f.read()
    if not data:
        raise CheckpointError(f"checkpoint {path!r} is damaged (an empty file)")
    archive, checksum = _split_checksum(data)
    if checksum is not None and hashlib.sha256(archive).hexdigest() != checksum:
        raise CheckpointError(f"checkpoint {path!r} is damaged (its content does not match its checksum)")
    try:
        state = torch.load(io.BytesIO(archive), map_location=map_location, weights_only=True)
    except Exception as error:
        raise CheckpointError(f"checkpoint {path!r} is damaged or not a checkpoint ({_first_line(error)})") from error
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path!r} is not a checkpoint (it holds a {type(state).__name__}, "
                              "not a dict)")
    missing = [key for key in keys if key not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path!r} is damaged or not a checkpoint of this kind (it lacks "
                              f"{', '.join(missing)})")
    if checksum is None:
        reason = f"checkpoint {path!r} cannot be verified ({_unverified_reason(data)})"
        if not allow_unverified:
            raise UnverifiedCheckpointError(reason)
        warnings.warn(f"{reason}; loaded unverified as asked", UnverifiedCheckpointWarning, stacklevel=2)
    return state
