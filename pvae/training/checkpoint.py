"""Checkpoints: ``state_dict``s plus JSON config, written atomically, read with ``weights_only=True``.

A checkpoint is a dict of tensors, numbers and strings only, so ``torch.load(...,
weights_only=True)`` can read it and a file cannot execute code on load. It holds the model's
class name and constructor config (a JSON string), its parameters, the optimizer state, the
random-number-generator states, the epoch, the history so far and a format version.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import torch

from pvae.util.files import atomic_write

FORMAT_VERSION = 1
CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"  # the checkpoint of the best test ELBO so far
REQUIRED = ("model_state", "epoch", "history", "fit_config", "config")


def save_checkpoint(path, module, *, optimizer=None, epoch: int = 0, history=None, rng=None,
                    fit_config=None, pyro_params=None, scheduler=None) -> Path:
    """Write ``module`` (and the training state) to ``path`` atomically; ``pyro_params`` are the
    program's parameters in Pyro's param store (unconstrained values, by store name)."""
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"save_checkpoint saves a torch module (the model), got {type(module).__name__}")
    if Path(path).is_dir():
        raise IsADirectoryError(f"{path} is a folder: name the checkpoint file, such as {Path(path) / 'checkpoint.pt'}")
    config = getattr(module, "config", None)
    state = {
        "format_version": FORMAT_VERSION,
        "model_class": type(module).__name__ if config is not None else None,
        "config": json.dumps(config),
        "model_state": module.state_dict(),
        "optimizer_state": optimizer.state_dict() if optimizer is not None else None,
        "scheduler_state": scheduler.state_dict() if scheduler is not None else None,
        "epoch": int(epoch),
        "history": json.dumps(list(history or [])),
        "fit_config": json.dumps(fit_config or {}),
        "rng": rng or {},
        "pyro_params": {name: t.detach() for name, t in (pyro_params or {}).items()},
        "pyro_constraints": json.dumps({name: _constraint_name(name) for name in (pyro_params or {})}),
    }
    atomic_write(path, lambda tmp: torch.save(state, tmp))
    return Path(path)


def update_model(path, module) -> None:
    """Replace the model (parameters and config) in the checkpoint at ``path``, keeping the rest of
    the training state: for parts fitted after training, such as a VQ-VAE's code prior."""
    state = torch.load(resolve(path), map_location="cpu", weights_only=True)
    state["model_state"] = module.state_dict()
    state["config"] = json.dumps(getattr(module, "config", None))
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def resolve(path) -> Path:
    """A run folder or a checkpoint file -> the checkpoint file."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    return path


def load_checkpoint(path, map_location="cpu") -> dict:
    """Read a checkpoint (a file or a run folder) safely; ``config``/``history`` come back parsed."""
    path = resolve(path)
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"PK\x03\x04":  # torch.save writes a zip archive
        raise ValueError(f"{path} is not a pvae checkpoint (not a file torch.save wrote)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:  # torch's message advises weights_only=False: never pass that on
        raise ValueError(f"cannot read checkpoint {path}: it holds Python objects that could run code when "
                         "loaded; pvae reads only tensors, numbers and strings (refused)") from None
    except Exception as e:  # noqa: BLE001 - one clear line for truncated or corrupt files
        raise ValueError(f"cannot read checkpoint {path}: {type(e).__name__}: "
                         f"{str(e).strip().splitlines()[0] if str(e).strip() else 'unreadable'}") from None
    if not isinstance(state, dict) or "format_version" not in state:
        raise ValueError(f"{path} is not a pvae checkpoint")
    missing = [k for k in REQUIRED if k not in state]
    if missing:
        raise ValueError(f"{path} is not a complete pvae checkpoint: it lacks {', '.join(missing)}")
    if state["format_version"] != FORMAT_VERSION:
        raise ValueError(f"{path} has checkpoint format {state['format_version']}, this pvae reads "
                         f"format {FORMAT_VERSION}")
    for key in ("config", "history", "fit_config"):
        try:
            state[key] = json.loads(state[key])
        except (TypeError, json.JSONDecodeError):
            raise ValueError(f"{path} is damaged: its {key} is not valid JSON") from None
    return state


def load_state(module, state: dict, path) -> None:
    """``module.load_state_dict(state["model_state"])``, a mismatch said in one line."""
    try:
        module.load_state_dict(state["model_state"])
    except RuntimeError:
        own, saved = module.state_dict(), state["model_state"]
        for name in own:
            if name in saved and tuple(saved[name].shape) != tuple(own[name].shape):
                raise ValueError(f"checkpoint {resolve(path)} does not fit this model: {name} has shape "
                                 f"{tuple(saved[name].shape)} there and {tuple(own[name].shape)} here (another "
                                 "model size)") from None
        missing, extra = sorted(set(own) - set(saved)), sorted(set(saved) - set(own))
        raise ValueError(f"checkpoint {resolve(path)} does not fit this model ({type(module).__name__}): "
                         + (f"it lacks {missing[0]}" if missing else f"it has {extra[0]}, which this model has not")
                         + (f" and {len(missing) + len(extra) - 1} more" if len(missing) + len(extra) > 1 else "")) from None


_CONSTRAINTS = ("real", "positive", "unit_interval", "simplex", "nonnegative", "lower_cholesky",
                "positive_definite", "corr_cholesky", "real_vector", "ordered_vector")


def _constraint_name(name: str):
    import pyro
    from pyro.distributions import constraints

    c = pyro.get_param_store()._constraints.get(name)
    return next((n for n in _CONSTRAINTS if getattr(constraints, n, None) is c), None)


def restore_store_params(params: dict, saved: dict) -> None:
    """Copy saved unconstrained values into the program's param-store tensors ``params``."""
    missing = sorted(set(saved) - set(params))
    if missing:
        raise ValueError(f"the checkpoint holds param-store parameters {missing} that this program does not "
                         "register (pyro.param / pyro.module)")
    with torch.no_grad():
        for name, value in saved.items():
            params[name].copy_(value)


def load_store_params(path, map_location="cpu") -> None:
    """Put a checkpoint's param-store parameters (``pyro.param``/``pyro.module`` of a program of
    your own) into Pyro's param store, where the program finds them: existing entries are
    overwritten in place, missing ones created with their constraint."""
    import pyro
    from pyro.distributions import constraints

    store = pyro.get_param_store()
    state = load_checkpoint(path, map_location)
    kinds = json.loads(state.get("pyro_constraints") or "{}")
    for name, value in (state.get("pyro_params") or {}).items():
        if name in store._params:
            with torch.no_grad():
                store._params[name].copy_(value)
            continue
        if kinds.get(name) is None:
            raise ValueError(f"cannot restore param-store parameter {name!r}: its constraint is not one pvae "
                             "can name; run the program once (creating it) and load again")
        constraint = getattr(constraints, kinds[name])
        store._params[name] = value.clone().requires_grad_()
        store._constraints[name] = constraint
        store._param_to_name[store._params[name]] = name


def load(path, model=None, map_location="cpu"):
    """The trained model in a run folder or checkpoint file.

    pvae's own classes are rebuilt from the stored config; for a model/guide pair of your own,
    pass the freshly built module as ``model`` and its parameters are loaded into it.
    """
    from pvae.models import MODELS

    state = load_checkpoint(path, map_location)
    if model is None:
        cls = MODELS.get(state["model_class"] or "")
        if cls is None:
            raise ValueError(f"{resolve(path)} holds a model of your own ({state['model_class'] or 'no config'}): "
                             "build it and pass it as pvae.load(path, model=...)")
        model = cls(**state["config"])
    load_state(model, state, path)
    if state.get("pyro_params"):
        load_store_params(path, map_location)
    return model.to(map_location) if map_location is not None else model


def _rng_state(shuffle: torch.Generator) -> dict:
    state = {"torch": torch.get_rng_state(), "shuffle": shuffle.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict, shuffle: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    shuffle.set_state(state["shuffle"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
