r"""A compiled graph's C++ kernels built as two shared libraries, not one per kernel.

On the CPU, inductor writes each fused kernel of a graph to its own C++ file and builds each into
its own Python extension. Every such build pays the same fixed cost before it compiles a line of
the kernel: loading inductor's 150 MB precompiled header (0.5 s on 2 AMD EPYC cores: an empty
kernel took 0.50-0.56 s to compile) and linking against torch's libraries (0.2-0.35 s). The ELBO
step of the IWAE paper's net has 11 kernels; their builds took 4.5-5 s of a 13-14 s compile
(two at a time, `benchmarks/bench_compile.py`), most of it that fixed cost.

`batched_kernels` has inductor's kernels of one graph compiled together instead: while a pvae graph
compiles, ``AsyncCompile.cpp_pybinding`` (how inductor's generated code asks for a kernel) only
collects the kernels' sources; once the generated code waits for its kernels, they are built as
``parts`` libraries (one per compile worker, balanced by length), each kernel in a namespace of
its own and one Python method per kernel, through inductor's own code cache (its flags, its
precompiled header, its on-disk cache and file locks). The kernels' code is inductor's, unchanged:
only how many files it is compiled in changes, and the compiled graph is still checked against
the recording (`pvae.infer.graphs.compile_graph`). Kernels whose source does not have the shape
this expects, or a batch that fails to build, are built one by one as inductor would have.

`header_ahead` has inductor's precompiled header built on a thread from the start of the compile
(the compiler runs on the second core while inductor lowers the graph on the first), so that the
kernel builds find it ready: a machine's first compile of the ELBO step took 9.74 s, not 15.08 s.
"""

from __future__ import annotations

import contextlib
import re
import threading

_EXTERN = re.compile(r'extern\s+"C"\s+')


class _Unexpected(Exception):
    """A kernel source or binding template not laid out as this module expects."""


def _split(source: str) -> tuple[list, str]:
    """``(include lines, the rest)`` of one kernel's source, its entry point made a plain C++
    function (so that it can live in a namespace)."""
    lines = source.splitlines()
    includes = [line.strip() for line in lines if line.strip().startswith("#include")]
    body = "\n".join(line for line in lines if not line.strip().startswith("#include"))
    if len(_EXTERN.findall(body)) != 1 or not re.search(r"\bkernel\s*\(", body):
        raise _Unexpected("kernel source")
    return includes, _EXTERN.sub("", body, count=1)


def combined_source(kernels: list, template: str) -> str:
    """One C++ file for ``kernels`` (``(index, argtypes, source)``): each kernel's code in namespace
    ``pvae_kernel_<index>``, and a Python module ``kernel`` (as inductor loads it) with one method
    ``kernel_<index>`` per kernel, written from inductor's own binding ``template``."""

    def binding(i, argtypes):
        parse = ", ".join(f"parse_arg<{t.replace('const ', '')}>(args, {n})" for n, t in enumerate(argtypes))
        return template.format(arg_len=len(argtypes), entry_func="kernel", extra_parse_arg="",
                               call_entry_func=f"pvae_kernel_{i}::kernel({parse}); Py_RETURN_NONE;")

    includes, bodies, functions = [], [], []
    preamble = methods = None
    for i, argtypes, source in kernels:
        found, body = _split(source)
        includes += [line for line in found if line not in includes]
        bodies.append(f"namespace pvae_kernel_{i} {{\n{body}\n}}  // namespace pvae_kernel_{i}\n")
        text = binding(i, argtypes)
        start, table = text.find("static PyObject* kernel_py("), text.find("static PyMethodDef py_methods[]")
        if start < 0 or table < start:
            raise _Unexpected("binding template")
        functions.append(text[start:table].replace("kernel_py(", f"kernel_{i}_py(", 1))
        if preamble is None:
            preamble, methods = text[:start], text[table:]
    entry = '{"kernel", kernel_py, METH_VARARGS, ""},'
    if methods is None or entry not in methods:
        raise _Unexpected("binding template")
    methods = methods.replace(entry, "\n".join(f'{{"kernel_{i}", kernel_{i}_py, METH_VARARGS, ""}},'
                                               for i, _, _ in kernels))
    return "\n".join(includes) + "\n" + "".join(bodies) + preamble + "".join(functions) + methods


def _parts(kernels: list, parts: int) -> list:
    """``kernels`` dealt into at most ``parts`` groups of about equal source length, longest first."""
    groups = [[] for _ in range(max(1, min(parts, len(kernels))))]
    sizes = [0] * len(groups)
    for kernel in sorted(kernels, key=lambda k: -len(k[2])):
        g = sizes.index(min(sizes))
        groups[g].append(kernel)
        sizes[g] += len(kernel[2])
    return [sorted(g) for g in groups if g]


class _Batch:
    """The kernels one generated module asks for, built together on the first wait for any."""

    def __init__(self, compile_one, submit, parts: int):
        self.compile_one, self.submit, self.parts = compile_one, submit, parts
        self.kernels: list = []  # (index, argtypes, source)
        self.built: dict = {}  # index -> the kernel's Python callable

    def add(self, argtypes, source):
        from torch._inductor.codecache import LambdaFuture

        index = len(self.kernels)
        self.kernels.append((index, list(argtypes), source))
        return LambdaFuture(lambda: self._kernel(index))

    def _kernel(self, index):
        if index not in self.built:
            self._build()
        return self.built[index]

    def _build(self) -> None:
        from torch._inductor.codecache import CppPythonBindingsCodeCache as Cache

        todo = [k for k in self.kernels if k[0] not in self.built]
        try:
            groups = _parts(todo, self.parts)
            loads = [(group, Cache.load_async(combined_source(group, Cache.suffix_template), "cpu",
                                              submit_fn=self.submit)) for group in groups]
            for group, load in loads:
                module = load()
                for i, _, _ in group:
                    self.built[i] = getattr(module, f"kernel_{i}")
        except Exception:  # noqa: BLE001 - one by one, as inductor builds them
            for i, argtypes, source in todo:
                if i not in self.built:
                    self.built[i] = self.compile_one(argtypes, source)


@contextlib.contextmanager
def batched_kernels(parts: int | None = None):
    """While a pvae graph compiles on the CPU: inductor's C++ kernels of each generated module are
    built together, in ``parts`` libraries (default: inductor's compile workers, at least 2).
    Where inductor compiles in its own process, one build at a time (``compile_threads=1``, whose
    generated code does not wait on futures), or has no such hook, it builds as it would."""
    try:
        from torch._inductor.async_compile import AsyncCompile, get_compile_threads
        from torch._inductor.codecache import CppPythonBindingsCodeCache, LambdaFuture  # noqa: F401
    except ImportError:
        yield
        return
    original = AsyncCompile.__dict__.get("cpp_pybinding")
    workers = get_compile_threads()
    if original is None or workers <= 1 or not hasattr(CppPythonBindingsCodeCache, "suffix_template"):
        yield
        return
    parts = parts or max(2, workers)

    def cpp_pybinding(self, argtypes, source_code):
        batch = self.__dict__.get("_pvae_batch")
        if batch is None:
            batch = self._pvae_batch = _Batch(CppPythonBindingsCodeCache.load_pybinding, self.submit, parts)
        return batch.add(argtypes, source_code)

    AsyncCompile.cpp_pybinding = cpp_pybinding
    try:
        yield
    finally:
        AsyncCompile.cpp_pybinding = original


@contextlib.contextmanager
def header_ahead():
    """While a pvae graph compiles on the CPU: inductor's precompiled header (about 150 MB, 5.5-7.4 s
    to build on 2 AMD EPYC cores the first time on a machine) is built on a thread from the start,
    while the graph is lowered and its code generated, instead of after, when the first kernel build
    asks for it. The thread asks inductor's own code cache for a build of an empty source, which
    builds the header the way every kernel build will ask for it (inductor's flags, instruction set
    and file locks; the build itself is never started); it waits on the compiler, so it holds no
    lock that the compile needs. Where the header is built already, the thread only checks that
    (about 0.15 s), which the first kernel build then skips. Any failure here is ignored: the kernel
    builds then build the header as they would have."""
    try:
        from torch._inductor import config
        from torch._inductor.codecache import CppPythonBindingsCodeCache as Cache
    except ImportError:
        yield
        return
    if not getattr(config, "cpp_cache_precompile_headers", False):
        yield
        return

    settings = config.get_config_copy()  # inductor's settings are the thread's own: the thread takes the caller's

    def build():
        try:
            with config.patch(settings):
                Cache.load_async("// pvae: inductor's precompiled header, built ahead of the kernels\n", "cpu")
        except Exception:  # noqa: BLE001 - advisory: the kernel builds build it themselves
            pass

    thread = threading.Thread(target=build, name="pvae-header", daemon=True)
    thread.start()
    try:
        yield
    finally:
        thread.join()
