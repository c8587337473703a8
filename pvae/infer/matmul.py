r"""Which library runs each matrix product of a traced graph on the CPU.

torch multiplies float32 matrices on the CPU with MKL. On some CPUs (AMD EPYC among them: MKL
takes its generic path on a CPU that is not Intel's) oneDNN, which torch also ships, is 1.5-2.5x
faster for the shapes of a VAE: a (100, 784) x (784, 200) product took 309 us with MKL and 173 us
with oneDNN on these machines; at (5000, 200) x (200, 784), 9.5 ms and 4.3 ms. XLA, which NumPyro
compiles through, picks its own kernels; this is how pvae's compiled graphs do the same.

`use_fastest_matmuls` rewrites a graph recorded by ``make_fx``: every ``aten.mm`` and
``aten.addmm`` (with a vector bias) becomes oneDNN's ``_linear_pointwise`` where, timed on tensors
of the very shapes and strides of that product, oneDNN is at least 10% faster (for a weight
gradient ``g^T a``, computed as ``(a^T g)^T``, which spares a copy); elsewhere MKL stays.
The choice is measured once per shape and stride and cached for the process, so the same program
on an Intel CPU keeps MKL where MKL is faster. Both compute the same float32 product; only the
order of the additions differs (the graph is checked against the unrewritten one after compiling,
see [`pvae.infer.compiled`][pvae.infer.compiled]).

Inductor lowers ``_linear_pointwise`` only for constant (frozen) weights; `onednn_lowering` lets it
call the op as an external kernel while a pvae graph compiles, and restores inductor's own lowering
afterwards.
"""

from __future__ import annotations

import contextlib
import json
import statistics
import time
from pathlib import Path

import torch

from pvae.util.cache import cache_dir, machine_tag, read_record, write_record

aten = torch.ops.aten
_cache: dict = {}  # (shapes, strides, dtype, bias) -> "mkl" | "onednn" | "swapped", this process
_disk: dict | None = None  # the same, as an earlier process on this CPU and torch chose (loaded once)


def available() -> bool:
    """oneDNN's linear op is in this torch build."""
    return bool(torch.backends.mkldnn.is_available()) and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _linear():
    return torch.ops.mkldnn._linear_pointwise.default


def _like(meta) -> torch.Tensor:
    """A CPU tensor of the recorded value's shape and strides, with random entries."""
    t = torch.empty_strided(tuple(meta.shape), tuple(meta.stride()), dtype=meta.dtype)
    return t.normal_()


def _timed(candidates: dict, budget: float = 0.2) -> dict:
    """Median seconds of each candidate, timed in interleaved rounds (so that the machine's noise
    falls on all of them alike): at least 5 rounds, more while within ``budget`` seconds, at most 21."""
    for fn in candidates.values():
        fn()  # warm: first-call allocations and oneDNN's kernel choice
    times: dict = {name: [] for name in candidates}
    spent, rounds = 0.0, 0
    while rounds < 5 or (spent < budget and rounds < 21):
        for name, fn in candidates.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
            spent += times[name][-1]
        rounds += 1
    return {name: statistics.median(t) for name, t in times.items()}


def _disk_file() -> Path | None:
    """Where the choices persist between processes: one record per CPU model, torch version and
    thread count (`pvae.util.cache`), since each changes which library is faster."""
    root = cache_dir()
    return None if root is None else root / f"matmul-{machine_tag()}.json"


def _load_disk() -> dict:
    path = _disk_file()
    saved = read_record(path.name) if path is not None else None
    choices = ("mkl", "onednn", "swapped", "float32", "bfloat16")
    return {k: v for k, v in saved.items() if v in choices} if isinstance(saved, dict) else {}


def _save_disk(key, choice) -> None:
    path = _disk_file()
    if path is not None:
        saved = read_record(path.name)
        write_record(path.name, {**(saved if isinstance(saved, dict) else {}), key: choice})


def fastest(a_meta, b_meta, bias_meta=None, margin: float = 0.9) -> str:
    """How to run the product ``a @ b (+ bias)`` of tensors shaped and strided as these: ``"mkl"``
    (torch's own), ``"onednn"`` (oneDNN's linear op) or ``"swapped"`` (oneDNN on ``(b^T a^T)^T``,
    which spares oneDNN a copy of a transposed ``a``, as in a weight gradient). oneDNN must beat MKL
    by ``1 / margin``; timed once per shape and stride, and kept on disk (`_disk_file`) for the next
    process on this CPU and torch."""
    key = tuple((tuple(m.shape), tuple(m.stride()), str(m.dtype)) for m in (a_meta, b_meta)) + (bias_meta is not None,)

    def choose():
        a, b = _like(a_meta), _like(b_meta)
        bias = None if bias_meta is None else _like(bias_meta)
        op = _linear()
        candidates = {"mkl": lambda: torch.mm(a, b) if bias is None else torch.addmm(bias, a, b),
                      "onednn": lambda: op(a, b.t(), bias, "none", [], "")}
        if bias is None:
            candidates["swapped"] = lambda: op(b.t(), a, None, "none", [], "").t()
        with torch.no_grad():
            times = _timed(candidates)
        times["mkl"] *= margin
        return min(times, key=times.get)

    return _chosen(key, choose)


def _chosen(key, choose) -> str:
    """The choice kept for ``key``: this process's, else an earlier process's on disk, else
    ``choose()`` (a timing), then kept both ways."""
    global _disk
    if _disk is None:
        _disk = _load_disk()
    on_disk = json.dumps(key)
    if key not in _cache and on_disk in _disk:
        _cache[key] = _disk[on_disk]
    if key not in _cache:
        _cache[key] = _disk[on_disk] = choose()
        _save_disk(on_disk, _cache[key])
    return _cache[key]


def bf16_supported() -> bool:
    """oneDNN multiplies bfloat16 matrices natively on this CPU (AVX-512 BF16 or AMX)."""
    try:
        return available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def bf16_faster(a_meta, b_meta, margin: float = 0.8) -> bool:
    """Whether the product ``a @ b`` with its inputs rounded to bfloat16 (accumulated in float32,
    ``a`` cast on the way in and the result back to float32; ``b`` cast once, as a constant weight
    is) beats both float32 libraries by ``1 / margin`` on this CPU: timed once per shape and stride,
    kept on disk as `fastest` keeps its choices."""
    if not bf16_supported():
        return False
    key = ("bfloat16",) + tuple((tuple(m.shape), tuple(m.stride()), str(m.dtype)) for m in (a_meta, b_meta))

    def choose():
        a, b = _like(a_meta), _like(b_meta)
        b16, op = b.to(torch.bfloat16), _linear()
        candidates = {"float32": lambda: torch.mm(a, b), "onednn": lambda: op(a, b.t(), None, "none", [], ""),
                      "bfloat16": lambda: torch.mm(a.to(torch.bfloat16), b16).float()}
        with torch.no_grad():
            times = _timed(candidates)
        return "bfloat16" if times["bfloat16"] < margin * min(times["float32"], times["onednn"]) else "float32"

    return _chosen(key, choose) == "bfloat16"


def _value(node):
    val = node.meta.get("val") if isinstance(node, torch.fx.Node) else None
    return val if isinstance(val, torch.Tensor) else None


def use_fastest_matmuls(gm: torch.fx.GraphModule) -> int:
    """Rewrite, in place, the float32 CPU products of ``gm`` that oneDNN runs faster; returns how
    many were rewritten (0 where oneDNN is missing or never faster)."""
    if not available():
        return 0
    graph, op, done = gm.graph, _linear(), 0
    for node in list(graph.nodes):
        if node.op != "call_function" or node.kwargs:
            continue
        if node.target is aten.mm.default:
            bias, (a, b) = None, node.args
        elif node.target is aten.addmm.default:
            bias, a, b = node.args
        else:
            continue
        metas = [_value(a), _value(b)] + ([] if bias is None else [_value(bias)])
        if any(m is None or m.device.type != "cpu" or m.dtype != torch.float32 for m in metas):
            continue
        if bias is not None and (metas[2].dim() != 1 or metas[2].shape[0] != metas[1].shape[1]):
            continue  # addmm with a matrix (or broadcast) bias stays as it is
        how = fastest(metas[0], metas[1], None if bias is None else metas[2])
        if how == "mkl":
            continue
        if bias is not None:
            how = "onednn"  # a product with a bias has no swapped form
        with graph.inserting_before(node):
            if how == "onednn":
                b_t = graph.call_function(aten.t.default, (b,))
                new = graph.call_function(op, (a, b_t, bias, "none", [], ""))
            else:
                b_t = graph.call_function(aten.t.default, (b,))
                new = graph.call_function(aten.t.default, (graph.call_function(op, (b_t, a, None, "none", [], "")),))
        replace(graph, node, new)
        done += 1
    if done:
        graph.lint()
        gm.recompile()
    return done


def replace(graph, node, new) -> None:
    """``node`` of ``graph`` replaced by ``new`` (which computes the same value) in every use."""
    new.meta = dict(node.meta)
    node.replace_all_uses_with(new)
    graph.erase_node(node)


@contextlib.contextmanager
def onednn_lowering():
    """While a pvae graph compiles: inductor calls oneDNN's linear op as an external kernel (its own
    lowering requires a frozen weight). Restored on exit."""
    if not available():
        yield
        return
    from torch._inductor import lowering

    op = _linear()
    old = lowering.lowerings.get(op)
    lowering.lowerings[op] = lowering.fallback_handler(op, add_to_fallback_set=False)
    try:
        yield
    finally:
        if old is None:
            lowering.lowerings.pop(op, None)
        else:
            lowering.lowerings[op] = old
