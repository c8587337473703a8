"""The Pyro param store a training run works in.

Pyro keeps ``pyro.param`` and ``pyro.module`` parameters in one global store, by name. A module
registered under a name that an earlier module used gets the earlier module's tensors back from
``pyro.module`` (Pyro's well-known "call ``pyro.clear_param_store()`` first"): plain SVI then
optimizes tensors the loss does not depend on, silently. `run_param_store` gives every
[`pvae.fit`][pvae.fit] a store of its own that starts from the user's ``pyro.param`` entries as they are
(so a value set before ``fit`` is where training starts) without any ``pyro.module`` entry
(``NAME$$$param``: the module being trained registers its own), and leaves the global store
holding what the run trained, as plain SVI would.
"""

from __future__ import annotations

import contextlib

import pyro

MODULE_SEPARATOR = "$$$"  # pyro.module's NAME$$$param


@contextlib.contextmanager
def run_param_store():
    store = pyro.get_param_store()
    outer = store.get_state()
    inner = {part: {k: v for k, v in outer[part].items() if MODULE_SEPARATOR not in k} for part in outer}
    final = inner
    with store.scope(state=inner):
        try:
            yield
        finally:
            final = store.get_state()
    store.set_state(final)  # the user's entries, updated with (and joined by) what the run trained
