"""What reaches ``model(...)`` and ``guide(...)``: the tensors of a dataset, datapoint by datapoint.

The convention (the same in [`pvae.fit`][pvae.fit], the evaluator, [`pvae.compare`][pvae.compare]):

- a tensor, array, [`pvae.data.datasets.Data`][pvae.data.datasets.Data] or dataset name: ``model(x)``;
- a tuple ``(x, a, b, ...)``, a list, or a ``TensorDataset(x, a, b)``: ``model(x, a, b)``, every
  member passed positionally, one row per datapoint (labels, one-hot vectors, images, any
  tensor: which of them the program observes is its own business);
- a dict ``{"x": x, "y": y}``: ``model(x=x, y=y)`` by keyword, the first entry taken as the
  data x (binarized, shape-checked); an ``.npz`` file with arrays besides ``x`` and ``y`` is
  read the same way (``x`` first, every array by its name);
- the class labels a [`Data`][pvae.data.datasets.Data] carries (or ``labels=``) go to a user's program as
  its second argument when it takes one (``model(xs, ys=None)``), and to pvae's conditional
  models (``needs_labels``) checked as integers or one-hot rows.

A member that no argument of the model takes is an error naming it, never silently dropped.
"""

from __future__ import annotations

import inspect
import os

import numpy as np
import torch

from pvae.data.datasets import Data, _to_float, as_tensors
from pvae.infer.pair import ModelGuide, match_shape
from pvae.util.validate import check_data, check_labels


def _eval_inputs(data, pair, labels=None) -> Inputs:
    """The evaluation data as the pair's program takes it, checked (see [`pvae.infer.inputs`][pvae.infer.inputs])."""
    if isinstance(data, Inputs):
        return data
    return arrange(pair, data, labels, "evaluation data", evaluation=True)[0]


class Inputs:
    """The data as the program takes it: ``x`` (first positional, or keyword ``x_key``), further
    positional members ``args`` and keyword members ``kwargs``, each with one row per datapoint."""

    def __init__(self, x: torch.Tensor, args=(), kwargs=None, x_key: str | None = None):
        self.x, self.args, self.kwargs, self.x_key = x, tuple(args), dict(kwargs or {}), x_key
        self.notes: list = []  # what arranging the data did that a user should hear of

    @property
    def n(self) -> int:
        return self.x.shape[0]

    @property
    def y(self):
        """The second positional member (labels of a conditional model), or None."""
        return self.args[0] if self.args else None

    def to(self, device) -> "Inputs":
        moved = Inputs(self.x.to(device), [a.to(device) for a in self.args],
                       {k: v.to(device) for k, v in self.kwargs.items()}, self.x_key)
        moved.notes = list(self.notes)
        return moved

    def take(self, idx, x: torch.Tensor | None = None, device=None) -> tuple[tuple, dict]:
        """``(args, kwargs)`` for the datapoints ``idx`` (an index tensor or a slice); ``x``
        replaces their x (a fresh binarization)."""
        def get(t):
            t = t[idx]
            return t.to(device) if device is not None else t

        xb = get(self.x) if x is None else x
        rest, kw = tuple(get(a) for a in self.args), {k: get(v) for k, v in self.kwargs.items()}
        if self.x_key is None:
            return (xb,) + rest, kw
        return rest, {self.x_key: xb, **kw}

    def subset(self, idx) -> "Inputs":
        """The datapoints ``idx`` as inputs of their own."""
        part = Inputs(self.x[idx], [a[idx] for a in self.args], {k: v[idx] for k, v in self.kwargs.items()}, self.x_key)
        part.notes = list(self.notes)
        return part

    def head(self, n: int) -> tuple[tuple, dict]:
        return self.take(slice(0, n))


def _tensor(a, what: str) -> torch.Tensor:
    if isinstance(a, torch.Tensor):
        return a
    if isinstance(a, np.ndarray):
        if a.dtype.kind not in "biuf":
            raise TypeError(f"{what} holds {a.dtype} values ({a.dtype.kind!r} kind): data members must be numbers "
                            "(floats, integers or booleans)")
        return torch.from_numpy(a) if a.dtype != np.uint8 else _to_float(a)
    try:
        return torch.as_tensor(a)
    except Exception:
        raise TypeError(f"{what} must be a tensor or array, got {type(a).__name__}") from None


def _checked_member(a: torch.Tensor, name: str, what: str, dtype) -> torch.Tensor:
    """A member next to x: finite where it is a float (then in x's dtype, as x is converted)."""
    if a.is_complex():
        raise TypeError(f"{name} of the {what} is complex ({a.dtype}): data members must be real numbers")
    if a.is_floating_point():
        if not bool(torch.isfinite(a).all()):
            bad = int((~torch.isfinite(a)).sum())
            raise ValueError(f"{name} of the {what} holds NaN or inf ({bad} of {a.numel()} values): fix or drop "
                             "those datapoints")
        if dtype.is_floating_point and a.dtype != dtype:
            a = a.to(dtype)
    return a


def members(data, labels=None):
    """``(x, extra positional, extra keyword, x_key, binarize mode, class labels)`` of any data a
    user passes; class labels are the ones a `Data` carries (or ``labels=``), the extras
    are members the user put next to x explicitly."""
    if isinstance(data, (str, os.PathLike)) and str(data).endswith(".npz") and os.path.isfile(data):
        with np.load(data, allow_pickle=False) as z:
            arrays = dict(z)
        if "x" in arrays and set(arrays) - {"x", "y"}:  # several arrays: keywords, named as in the file
            return members({"x": arrays.pop("x"), **arrays}, labels)
    if isinstance(data, dict):
        if not data:
            raise ValueError("the data dict is empty")
        keys = list(data)
        x_key = keys[0]
        x = as_tensors(_tensor(data[x_key], f"data[{x_key!r}]"))[0]
        return x, [], {k: _tensor(data[k], f"data[{k!r}]") for k in keys[1:]}, x_key, "none", labels
    if isinstance(data, torch.utils.data.TensorDataset):
        data = tuple(data.tensors)
    if isinstance(data, (tuple, list)) and len(data) >= 2 and not isinstance(data[0], (int, float)):
        x = as_tensors(data[0])[0]
        return x, [_tensor(a, f"data member {i + 1}") for i, a in enumerate(data[1:], 1)], {}, None, "none", labels
    if isinstance(data, Data):
        return data.x, [], {}, None, data.binarize, labels if labels is not None else data.y
    if isinstance(data, torch.utils.data.Dataset) and not isinstance(data, Data):
        items = [data[i] for i in range(len(data))]
        if items and isinstance(items[0], (tuple, list)) and len(items[0]) > 2:
            cols = list(zip(*items))
            x = as_tensors(torch.stack([_tensor(c, "x") for c in cols[0]]))[0]
            return x, [torch.stack([_tensor(c, f"data member {i}") for c in col]) for i, col in enumerate(cols[1:], 1)], \
                {}, None, "none", labels
    x, y, mode = as_tensors(data, labels)
    return x, [], {}, None, mode, y


def _describe(t: torch.Tensor) -> str:
    return f"shape {tuple(t.shape)}"


def _params(fn):
    """``(positional names, has *args, keyword names, has **kwargs, defaults)`` of a program function."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    pos, kw, var_pos, var_kw, defaults = [], [], False, False, {}
    for p in sig.parameters.values():
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            pos.append(p.name)
        elif p.kind == p.VAR_POSITIONAL:
            var_pos = True
        elif p.kind == p.KEYWORD_ONLY:
            kw.append(p.name)
        else:
            var_kw = True
        defaults[p.name] = p.default
    return pos, var_pos, kw, var_kw, defaults


def _program_fn(pair, which: str):
    if isinstance(pair, ModelGuide):  # plain functions, wrapped
        return getattr(pair, f"_{which}")
    return getattr(pair, which)


def _float_dtype(pair) -> torch.dtype:
    """The floating dtype the pair's parameters hold (the default dtype when it has none)."""
    for p in pair.parameters():
        if torch.is_floating_point(p):
            return p.dtype
    return torch.get_default_dtype()


def own_model(pair) -> bool:
    """pvae's own variants (their signatures carry sample counts, their labels ``needs_labels``)."""
    from pvae.models.base import PyroVAE

    return isinstance(pair, PyroVAE) and type(pair).__module__.startswith("pvae.")


def arrange(pair, data, labels=None, what: str = "training data", evaluation: bool = False) -> tuple[Inputs, str]:
    """The data as the pair's program takes it (see the module docstring), checked: x against the
    model's shape and likelihood, every member's length, and every member against the program's
    signature. Returns ``(Inputs, binarize mode)``."""
    x, extra, kwextra, x_key, mode, class_labels = members(data, labels)
    if evaluation and isinstance(data, Data):
        x = data.eval_x()
    x = match_shape(x, pair, what)
    if not x.is_complex() and x.dtype != _float_dtype(pair):  # float64/16, integers, booleans: as the nets compute
        x = (_to_float(x) if x.dtype == torch.uint8 else x).to(_float_dtype(pair))
    check_data(x, pair, what)
    n = x.shape[0]
    for i, a in enumerate(extra, 1):
        if a.dim() == 0 or a.shape[0] != n:
            raise ValueError(f"data member {i + 1} of the {what} has {_describe(a)}: it needs one row per "
                             f"datapoint ({n})")
    for k, a in kwextra.items():
        if a.dim() == 0 or a.shape[0] != n:
            raise ValueError(f"data[{k!r}] of the {what} has {_describe(a)}: it needs one row per datapoint ({n})")
    extra = [_checked_member(a, f"data member {i + 1}", what, x.dtype) for i, a in enumerate(extra, 1)]
    kwextra = {k: _checked_member(a, f"data[{k!r}]", what, x.dtype) for k, a in kwextra.items()}
    if own_model(pair):
        y = extra[0] if extra else class_labels
        if len(extra) > 1 or kwextra:
            raise ValueError(f"{type(pair).__name__} takes x (and labels); the {what} have {1 + len(extra)} members "
                             f"{sorted(kwextra) if kwextra else ''}".rstrip())
        if labels is not None and not getattr(pair, "needs_labels", False):
            raise ValueError(f"labels= were given, but {type(pair).__name__} takes no labels: drop them, or use a "
                             "conditional model (ConditionalVAE, SemiSupervisedVAE)")
        y = check_labels(y, n, pair, what)
        return Inputs(x, [y] if y is not None else [], {}, x_key), mode
    x, note = _shape_for_program(pair, x, extra, kwextra, x_key, what)
    for which in ("model", "guide"):
        sig = _params(_program_fn(pair, which))
        if sig is None:
            continue
        pos, var_pos, kw, var_kw, defaults = sig
        takes = len(pos) - (1 if x_key is None else 0)
        if x_key is not None and not (x_key in pos or x_key in kw or var_kw):
            raise ValueError(f"data[{x_key!r}] is taken by no argument of the {which} ({', '.join(pos + kw)})")
        if len(extra) > takes and not var_pos:
            i = takes + 1
            raise ValueError(f"data member {i + 1} of the {what} ({_describe(extra[takes])}) is taken by no argument "
                             f"of the {which}, which takes {len(pos)} positional argument(s) ({', '.join(pos)}): "
                             "pass only the members the program takes")
        for k in kwextra:
            if not (k in pos or k in kw or var_kw):
                raise ValueError(f"data[{k!r}] of the {what} is taken by no argument of the {which} "
                                 f"({', '.join(pos + kw)})")
    if not extra and not kwextra and class_labels is not None and x_key is None:
        sig = _params(_program_fn(pair, "model"))
        if sig is not None:
            pos, var_pos, _, _, defaults = sig
            second = pos[1] if len(pos) > 1 else None
            if second is not None and defaults.get(second, None) in (inspect.Parameter.empty, None):
                extra = [torch.as_tensor(class_labels)]
            elif labels is not None:
                raise ValueError(f"labels= were given, but the model takes no second argument "
                                 f"({', '.join(pos)}): drop them or add a parameter for them")
            elif not var_pos:
                inputs = Inputs(x, extra, kwextra, x_key)
                inputs.notes = ([note] if note else []) + [f"the {what} carry labels, and the model takes only ({', '.join(pos)}): the labels "
                                "were not passed (give the model a second argument, e.g. model(x, y=None), to "
                                "condition on them)"]
                return inputs, mode
    _check_required(pair, extra, kwextra, x_key, what)
    inputs = Inputs(x, extra, kwextra, x_key)
    inputs.notes = [note] if note else []
    return inputs, mode


def _check_required(pair, extra, kwextra, x_key, what) -> None:
    """Every argument the model and guide require has a member in the data (else the first call
    would fail deep inside the program, or after training, on the test data)."""
    for which in ("model", "guide"):
        sig = _params(_program_fn(pair, which))
        if sig is None:
            continue
        pos, _, kw, _, defaults = sig
        rest = [p for p in pos if p != x_key][0 if x_key is not None else 1:]
        given = set(rest[:len(extra)]) | set(kwextra)
        missing = [p for p in rest + kw if defaults.get(p, inspect.Parameter.empty) is inspect.Parameter.empty
                   and p not in given]
        if missing:
            raise ValueError(f"the {which} requires {', '.join(missing)}, which the {what} do not hold: pass the data "
                             f"with {'that member' if len(missing) == 1 else 'those members'} (a tuple (x, "
                             f"{', '.join(missing)}) or a dict), or give the argument a default")


def _shape_for_program(pair, x, extra, kwextra, x_key, what):
    """``(x, note)``: image-shaped data for a program that declares no ``x_shape`` are tried on the
    program as they are and, if its nets refuse them, flattened to one vector per datapoint (the
    README's ``MyVAE`` takes 784 values). A program that takes neither is refused in one line naming
    ``x_shape``. Found once per program (eval mode, no gradient, random state restored)."""
    if x.dim() <= 2 or getattr(pair, "x_shape", None) is not None:
        return x, None
    known = getattr(pair, "_pvae_flat_input", None)
    if known is not None:
        return (x.reshape(x.shape[0], -1), _flat_note(x, what)) if known else (x, None)
    from pvae.infer.sites import plain_traces

    rows = slice(0, min(4, x.shape[0]))
    first = None
    for flat in (False, True):
        xb = x[rows].reshape(x[rows].shape[0], -1) if flat else x[rows]
        args, kwargs = _trial(xb, extra, kwextra, x_key, rows)
        modes = [(m, m.training) for m in pair.modules()]
        try:
            pair.eval()
            plain_traces(pair.model, pair.guide, *args, **kwargs)
        except (RuntimeError, ValueError, IndexError, TypeError) as e:
            first = first or e
            continue
        finally:
            for m, training in modes:
                m.train(training)
        pair._pvae_flat_input = flat
        return (x.reshape(x.shape[0], -1), _flat_note(x, what)) if flat else (x, None)
    message = str(first).strip().splitlines()[0] if str(first).strip() else type(first).__name__
    if any(w in message for w in ("shape", "size", "dimension")):
        raise ValueError(f"the program takes neither the {what}'s datapoints as they are {tuple(x.shape[1:])} "
                         f"({message}) nor flattened to ({x[0].numel()},): give the module an x_shape attribute "
                         "(the shape of one datapoint its nets take), or reshape the data") from None
    return x, None  # another failure: the program analysis says what it is


def _flat_note(x, what: str) -> str:
    return (f"the {what}'s datapoints of shape {tuple(x.shape[1:])} reach the program flattened to "
            f"({x[0].numel()},), as its nets take them (set an x_shape attribute to choose)")


def _trial(xb, extra, kwextra, x_key, rows):
    rest, kw = tuple(a[rows] for a in extra), {k: v[rows] for k, v in kwextra.items()}
    return ((xb,) + rest, kw) if x_key is None else (rest, {x_key: xb, **kw})
