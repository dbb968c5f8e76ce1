"""search --resume: the saved run's settings and state, checked before they are loaded."""
import os
import sys

from .common import UsageError
from .defaults import RESUME_MAY_CHANGE


def read_resume_state(settings, given):
    """(settings, checkpoint state or None): with --resume the saved run's settings and state,
    else a check that no run would be overwritten."""
    import warnings

    from ..search import CheckpointError, load_checkpoint
    from ..search.checkpoint import UnverifiedCheckpointWarning, remove_stale_temporaries
    from ..search.loop import CHECKPOINT_KEYS

    checkpoint_path = os.path.join(settings["out"], "checkpoint.pt")
    if not settings.get("resume"):
        if os.path.exists(checkpoint_path):
            raise UsageError(f"{checkpoint_path} exists: add --resume to continue that run, or choose another --out")
        if settings.get("allow_unverified_checkpoint"):
            raise UsageError("--allow-unverified-checkpoint applies with --resume only")
        return settings, None
    remove_stale_temporaries(settings["out"])
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UnverifiedCheckpointWarning)
            resume_state = load_checkpoint(checkpoint_path, keys=CHECKPOINT_KEYS,
                                           allow_unverified=bool(settings.get("allow_unverified_checkpoint")))
        for warning in caught:
            if issubclass(warning.category, UnverifiedCheckpointWarning):
                print(f"--allow-unverified-checkpoint: {warning.message}", file=sys.stderr)
            else:
                warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
        saved = resume_state["extra"].get("settings") if isinstance(resume_state["extra"], dict) else None
        if not isinstance(saved, dict):
            raise CheckpointError(f"checkpoint {checkpoint_path!r} holds no settings of a `fastdnas search` run")
    except FileNotFoundError as error:
        raise UsageError(str(error)) from error
    except CheckpointError as error:
        raise refused_checkpoint(error) from error
    changed = changed_settings(saved, given)
    if changed:
        raise UsageError(f"--resume continues the saved run; these settings differ from it: {changed}")
    # Settings added since the run was saved keep their defaults; a drnas run saved before the
    # progressive schedule was one stage.
    settings = {**settings, **saved, **{k: v for k, v in given.items() if k in RESUME_MAY_CHANGE}}
    if saved.get("method") == "drnas" and "drnas_stages" not in saved:
        settings["drnas_stages"] = 1
    return settings, resume_state


def changed_settings(saved, given):
    """'layers (saved 2, given 3), ...': the given settings --resume may not change that differ from the saved run's."""
    changed = sorted(k for k, v in given.items() if k not in RESUME_MAY_CHANGE and saved.get(k) != v)
    return ", ".join(f"{k} (saved {saved.get(k)!r}, given {given[k]!r})" for k in changed)


def resume_note(path, epochs):
    """What --resume would continue from after an interrupt: the epoch of the last checkpoint."""
    from ..search import CheckpointError, load_checkpoint

    try:
        epoch = load_checkpoint(path)["epoch"]
    except (OSError, CheckpointError):
        return " (no epoch was saved: nothing to resume; run it again without --resume)"
    return f" (add --resume to continue after epoch {epoch}/{epochs}, the last one saved in {path})"


def refused_checkpoint(error):
    """The UsageError for a checkpoint --resume cannot use: the reason, then what to do."""
    from ..search import UnverifiedCheckpointError

    anyway = (", or add --allow-unverified-checkpoint to load it unverified"
              if isinstance(error, UnverifiedCheckpointError) else "")
    return UsageError(f"{error}. --resume cannot continue from it: restore the file from a copy, or remove it "
                      f"(or choose another --out) and run without --resume to start over{anyway}")


def shape_of(value):
    """'a tensor of shape [2, 3]', 'a list of 4 entries', "str '3'": what a checkpoint holds, in brief."""
    if hasattr(value, "shape"):
        return f"a tensor of shape {list(value.shape)}"
    if isinstance(value, (list, tuple)):
        return f"a {type(value).__name__} of {len(value)} entries"
    return f"{type(value).__name__} {value!r}"[:80]


def check_resume_state(state, search, path):
    """Every field ``Search.load_state_dict`` reads, checked against this run before it is loaded:
    CheckpointError naming the first wrong one (a checkpoint with a valid checksum can still hold
    values no run of these settings wrote)."""
    import torch

    from ..search import CheckpointError
    from ..search.checkpoint import set_rng_state

    def check(ok, field, expected, value):
        if not ok:
            raise CheckpointError(f"checkpoint {path!r}: {field} must be {expected}, got {shape_of(value)}")

    def check_tensors(field, values, wanted):
        check(isinstance(values, (list, tuple)) and len(values) == len(wanted), field,
              f"a list of {len(wanted)} tensors", values)
        for i, (value, want) in enumerate(zip(values, wanted)):
            check(isinstance(value, torch.Tensor) and value.shape == want.shape, f"{field}[{i}]",
                  f"a tensor of shape {list(want.shape)}", value)

    epoch, epochs = state["epoch"], search.config.epochs
    check(type(epoch) is int and 0 <= epoch <= epochs, "epoch", f"an integer from 0 to {epochs}", epoch)
    if search.schedule is not None:  # a progressive search: the network brought to the saved stage's shapes
        schedule = state.get("schedule")
        check(isinstance(schedule, dict) and {"stage", "masks"} <= set(schedule), "schedule",
              "the stage and the operation masks of a progressive search", schedule)
        try:
            search.model.load_schedule_state(schedule)
        except (ValueError, TypeError, AttributeError) as error:
            raise CheckpointError(f"checkpoint {path!r}: {error}") from error
    model = search.model.state_dict()
    saved_model = state["model"]
    check(isinstance(saved_model, dict), "model", "a state dict", saved_model)
    different = sorted(set(saved_model) ^ set(model))
    if different:
        raise CheckpointError(f"checkpoint {path!r}: model must hold the state dict of this network; "
                              f"{different[0]!r} is {'missing' if different[0] in model else 'not part of it'}")
    for name, want in model.items():
        check(isinstance(saved_model[name], torch.Tensor) and saved_model[name].shape == want.shape,
              f"model[{name!r}]", f"a tensor of shape {list(want.shape)}", saved_model[name])
    check_tensors("arch_parameters", state["arch_parameters"], list(search.model.arch_parameters()))
    for field, optimizer in (("weight_optimizer", search.weight_optimizer), ("arch_optimizer", search.architect.optimizer)):
        saved = state[field]
        groups = [group["params"] for group in optimizer.param_groups]
        saved_groups = saved.get("param_groups") if isinstance(saved, dict) else None
        check(isinstance(saved_groups, list) and isinstance(saved.get("state"), dict)
              and [len(g.get("params", ())) if isinstance(g, dict) else None for g in saved_groups]
              == [len(g) for g in groups], field,
              f"an optimizer state of groups of {[len(g) for g in groups]} parameters", saved)
        params = [p for group in groups for p in group]
        for index, values in saved["state"].items():
            check(type(index) is int and 0 <= index < len(params) and isinstance(values, dict),
                  f"{field} state", f"per-parameter dicts for parameters 0 to {len(params) - 1}", index)
            for key, value in values.items():
                if isinstance(value, torch.Tensor) and value.dim() > 0:
                    check(value.shape == params[index].shape, f"{field} state[{index}][{key!r}]",
                          f"a tensor of shape {list(params[index].shape)}", value)
    check(isinstance(state.get("grad_scaler", {}), dict), "grad_scaler", "a dict", state.get("grad_scaler"))
    history = state["history"]
    check(isinstance(history, dict) and isinstance(history.get("epochs"), list)
          and isinstance(history.get("alphas"), list), "history", "a dict of the lists 'epochs' and 'alphas'",
          history)
    for key in ("epochs", "alphas"):
        check(len(history[key]) == epoch, f"history[{key!r}]", f"a list of {epoch} entries (one per epoch)",
              history[key])
    for i, alphas in enumerate(history["alphas"]):
        check_tensors(f"history['alphas'][{i}]", alphas, list(search.model.arch_parameters()))
    try:
        set_rng_state(state["rng"])  # load_state_dict sets it again
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, RuntimeError) as error:
        raise CheckpointError(f"checkpoint {path!r}: rng must be the random number generator states a "
                              f"search saves ({type(error).__name__}: {str(error).splitlines()[0][:100]})") from error
