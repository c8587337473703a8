"""Any model/guide pair, as one module the trainer and evaluator can drive.

Users bring their own variants in either of two shapes:

- an ``nn.Module`` (or ``PyroModule``) with methods ``model(x, ...)`` and ``guide(x, ...)``;
- two plain functions plus the ``nn.Module`` (or list of modules) holding their parameters:
  ``pvae.fit(model_fn, data, guide=guide_fn, modules=[encoder, decoder])``.

Either way every sample site of a datapoint must sit inside ``pyro.plate("data", ...)``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import torch
from torch import nn


class ModelGuide(nn.Module):
    """Wraps plain ``model``/``guide`` functions and the modules whose parameters they use."""

    def __init__(self, model: Callable, guide: Callable, modules=None):
        super().__init__()
        if isinstance(modules, nn.Module):
            modules = [modules]
        self.nets = nn.ModuleList(list(modules or []))
        self._model, self._guide = model, guide
        self.config = None

    def model(self, *args, **kwargs):
        return self._model(*args, **kwargs)

    def guide(self, *args, **kwargs):
        return self._guide(*args, **kwargs)


def as_pair(model, guide=None, modules=None) -> nn.Module:
    """``model`` (an object with ``.model``/``.guide``) or ``(model_fn, guide_fn, modules)`` -> a
    module with ``.model`` and ``.guide``."""
    if guide is None:
        if not (hasattr(model, "model") and hasattr(model, "guide")):
            raise TypeError("pass a module with .model and .guide methods, or a model function "
                            "with guide=... (and modules=... holding their parameters)")
        if isinstance(model, nn.Module) and modules is None:
            return model
        if modules is None:
            raise TypeError(f"{type(model).__name__} has .model/.guide but is not an nn.Module; "
                            "pass modules=... holding its parameters")
        return ModelGuide(model.model, model.guide, modules)
    if not (callable(model) and callable(guide)):
        raise TypeError("model and guide must be callables")
    return ModelGuide(model, guide, modules)


def match_shape(x: torch.Tensor, pair, what: str = "data") -> torch.Tensor:
    """Reshape ``x`` to the pair's ``x_shape`` (if it declares one) when the number of values per
    datapoint agrees; a ``ValueError`` naming both shapes when it does not."""
    shape = getattr(pair, "x_shape", None)
    if shape is None or tuple(x.shape[1:]) == tuple(shape):
        return x
    if math.prod(x.shape[1:]) != math.prod(shape):
        raise ValueError(f"{what} of shape {tuple(x.shape[1:])} per datapoint do not fit the model's "
                         f"x_shape {tuple(shape)}")
    return x.reshape((x.shape[0],) + tuple(shape))


def load_program(spec: str) -> nn.Module:
    """A model/guide pair of your own from ``"path/to/file.py:Name"`` or ``"package.module:Name"``:
    ``Name`` is an ``nn.Module`` class with ``.model``/``.guide`` (built with no arguments), or a
    function returning such a module. The CLI's ``--model`` takes these. A file that cannot be
    imported (a syntax error, a missing package, a script that parses ``sys.argv`` or exits when
    imported) or a name that builds no pair is one line naming the file and the fix."""
    import importlib

    where, sep, name = spec.rpartition(":")
    if not sep or not where or not name:
        raise ValueError(f"--model {spec!r}: write FILE.py:NAME or module:NAME for a program of your own")
    if where.endswith(".py"):
        module = _import_file(spec, Path(where))
    else:
        module = _importing(spec, where, lambda: importlib.import_module(where))
    if not hasattr(module, name):
        raise ValueError(f"--model {spec!r}: {where} has no {name}")
    return _build_program(spec, getattr(module, name))


def _import_file(spec: str, path: Path):
    import importlib.util
    import sys

    if not path.is_file():
        raise FileNotFoundError(f"--model {spec!r}: no such file {path}")
    mod_name = f"_pvae_program_{path.stem}"
    module_spec = importlib.util.spec_from_file_location(mod_name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[mod_name] = module
    sys.path.insert(0, str(path.resolve().parent))
    argv, sys.argv = sys.argv, [str(path)]  # a file that reads its command line on import sees none of pvae's
    try:
        _importing(spec, path, lambda: module_spec.loader.exec_module(module))
    except ValueError:
        sys.modules.pop(mod_name, None)
        raise
    finally:
        sys.argv = argv
        sys.path.remove(str(path.resolve().parent))
    return module


def _importing(spec: str, where, run):
    """``run()`` (an import), its failures as one line naming the file and what to do. What the
    file writes to stderr is passed on, except where the import fails (its last line is then
    part of the message)."""
    import contextlib
    import io
    import sys

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            out = run()
        sys.stderr.write(err.getvalue())
        return out
    except SystemExit as e:
        said = err.getvalue().strip().splitlines()
        raise ValueError(f"--model {spec!r}: importing {where} ended the program (exit status {e.code}"
                         + (f": {said[-1][:160]}" if said else "") + "): the file runs a script when imported "
                         "(parsing a command line?); put that part under if __name__ == \"__main__\":") from None
    except SyntaxError as e:
        raise ValueError(f"--model {spec!r}: {where} has a syntax error at line {e.lineno}: {e.msg}") from None
    except ImportError as e:
        raise ValueError(f"--model {spec!r}: importing {where} failed: {e} (install what it imports, or fix the "
                         "import)") from None
    except Exception as e:  # noqa: BLE001 - whatever the user's file raises while it is imported
        raise ValueError(f"--model {spec!r}: importing {where} raised {type(e).__name__}: "
                         f"{_first_line(e)}") from None


def _build_program(spec: str, obj) -> nn.Module:
    if isinstance(obj, nn.Module):
        raise ValueError(f"--model {spec!r}: {type(obj).__name__} instance found; name its class (or a function "
                         "that returns a fresh module), which pvae builds with no arguments")
    if not callable(obj):
        raise ValueError(f"--model {spec!r} is of type {type(obj).__name__}, not a class or function: name an nn.Module "
                         "class with .model and .guide (or a function returning one)")
    try:
        built = obj()
    except TypeError as e:
        raise ValueError(f"--model {spec!r}: building it with no arguments failed ({_first_line(e)}): give every "
                         "constructor argument a default, or name a function that returns the module") from None
    except Exception as e:  # noqa: BLE001 - the user's constructor
        raise ValueError(f"--model {spec!r}: its constructor raised {type(e).__name__}: {_first_line(e)}") from None
    try:
        return as_pair(built)
    except TypeError as e:
        raise ValueError(f"--model {spec!r} built a {type(built).__name__}: {_first_line(e)}") from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


def program_fingerprint(spec: str) -> str | None:
    """sha256 of the source file of a ``--model FILE.py:NAME`` (or ``module:NAME``) program, read as
    bytes and never imported here (None where no file is found). A run records it so that a later
    command can tell whether the program it is given is the one the run trained."""
    import hashlib
    import importlib.util
    from pathlib import Path

    where = spec.rpartition(":")[0]
    path = Path(where) if where.endswith(".py") else None
    if path is None:
        try:
            found = importlib.util.find_spec(where)
        except (ImportError, ValueError):
            found = None
        path = Path(found.origin) if found is not None and found.origin else None
    if path is None or not path.is_file():
        return None
    return hashlib.sha256(path.read_bytes()).hexdigest()
