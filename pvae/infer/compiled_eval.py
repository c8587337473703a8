"""Evaluation's pass compiled: ``log_weight_terms`` for a number of particles and an input shape,
traced once into a graph of tensor operations and compiled, as the training step is
([`pvae.infer.compiled`][pvae.infer.compiled]); the parameters and buffers are the graph's inputs,
so training between two evaluations is seen. ``eval_signature`` names what an evaluation compiled,
for the record of what this machine compiled before (`pvae.util.cache`)."""

from __future__ import annotations

import pyro
import torch
from torch.nn.utils.stateless import _reparametrize_module

from pvae.infer.compiled import python_state
from pvae.infer.graphs import _flatten, _key, _set_rng_state, _unflatten, compile_graph, record
from pvae.util.cache import remember


class CompiledTerms:
    """Evaluation's pass, ``log_weight_terms(model, guide, *args, num_particles=c)`` with its three
    ``(c, batch)`` results, traced and compiled once per number of particles and input shape (the
    parameters and buffers are inputs of the graph, so training between calls is seen). Returns
    None where a graph cannot be made, and the caller runs the eager pass."""

    def __init__(self, pair, program, say=print):
        self.pair, self.program, self.say = pair, program, say
        self.names = [n for n, _ in pair.named_parameters()] + [n for n, _ in pair.named_buffers()]
        self.graphs: dict = {}

    def _state(self):
        return [p.detach() for _, p in self.pair.named_parameters()] + [b for _, b in self.pair.named_buffers()]

    def _terms(self, *flat, spec, k):
        from pvae.infer.program import log_weight_terms

        n = len(self.names)
        args, kwargs = _unflatten(flat[n:], spec)
        with _reparametrize_module(self.pair, dict(zip(self.names, flat[:n]))), pyro.validation_enabled(False):
            t = log_weight_terms(self.pair.model, self.pair.guide, *args, num_particles=k, program=self.program,
                                 **kwargs)
        return t.log_px_z, t.log_pz, t.log_qz

    def __call__(self, args, kwargs, k: int, compile_new: bool = True):
        """The three terms from this shape's graph (traced and compiled on its first call), or None;
        ``compile_new=False`` runs only a graph compiled before (None for a new shape)."""
        tensors, spec = _flatten(args, kwargs)
        key = (k,) + _key(tensors, spec) + (tuple(sorted(python_state(self.pair).items(), key=str)),)
        inputs = self._state() + list(tensors)
        if key not in self.graphs:
            if not compile_new:
                return None
            recorded = record(lambda *flat: self._terms(*flat, spec=spec, k=k), inputs, inputs, self.say,
                              "compiled evaluation: the pass stays eager")
            graph = None
            if recorded is not None:
                graph, state, replay = recorded
                graph = compile_graph(graph, inputs, state, replay, self.say, what="compiled evaluation")
                _set_rng_state(state)  # this call draws what the eager pass would have drawn
                if graph is not None:  # the next evaluation of this model compiles warm, of this shape warmer
                    remember(eval_signature(self.pair))
                    remember(eval_signature(self.pair, args, kwargs, k))
            self.graphs[key] = graph
        graph = self.graphs[key]
        return None if graph is None else graph(*inputs)


def eval_signature(pair, args=None, kwargs=None, k: int | str | None = None) -> str:
    """What makes two evaluations compile the same graphs: the module's structure and torch's version
    (with ``args``, ``kwargs`` and ``k``: and one pass's input shapes and particles, or whatever else
    ``k`` names that shapes the graph (AIS: its chains and start), the exact graph, which inductor's
    on-disk cache then holds)."""
    import hashlib

    text = f"{type(pair).__qualname__}|{pair!r}|{torch.__version__}"
    if args is not None:
        tensors, spec = _flatten(args, kwargs or {})
        text += f"|{k}|{_key(tensors, spec)}"
    return "eval-" + hashlib.sha256(text.encode()).hexdigest()[:24]
