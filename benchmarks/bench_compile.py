"""Where the first compiled step's time goes: a timeline of inductor's phases, measured in one run.

    python benchmarks/bench_compile.py                   # pvae's and inductor's caches as this machine has them
    python benchmarks/bench_compile.py --cold            # fresh caches, inductor's header too: a machine's first compile
    python benchmarks/bench_compile.py --hidden 317      # a net this machine has not compiled (new kernels)
    python benchmarks/bench_compile.py --objective iwae:k=50

`pvae.fit(..., compile="step")` on 1,000 Fashion-MNIST images, batch 100, two epochs. ``--cold``
gives pvae a fresh ``PVAE_CACHE_DIR``, where its compiles keep inductor's caches (its records, its
product choices, inductor's FX graph cache, kernels and precompiled header). Prints, from the start of the run, when each phase
began and ended (pvae's recording and product choice, inductor's AOT autograd, lowering,
scheduler, code generation, every C++ build: "check" for inductor's instruction-set test programs,
"precompiled header", "kernel"), then the compile's cost: epoch 1 minus epoch 2, and the time
importing inductor took before the clock started (a fresh process's first compile pays it too).
"""

from __future__ import annotations

import argparse
import functools
import os
import tempfile
import time


def _build(cmd: str) -> str:
    """What a C++ build of inductor's is: a kernel, its precompiled header (or the header's
    preprocessing, done in every new process), or a test program for an instruction set."""
    if "-include" in cmd:
        return "kernel"
    if " -E " in cmd:
        return "header preprocess"
    return "precompiled header" if "precompiled_headers" in cmd else "check"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cold", action="store_true", help="a fresh PVAE_CACHE_DIR (inductor's caches in it)")
    ap.add_argument("--hidden", type=int, default=200, help="the width of both hidden layers (the IWAE net: 200)")
    ap.add_argument("--objective", default="elbo")
    args = ap.parse_args()
    if args.cold:  # pvae keeps inductor's caches, its precompiled header too, beside its records
        os.environ["PVAE_CACHE_DIR"] = tempfile.mkdtemp(prefix="pvae-cache-")
        os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
    import pvae
    import pvae.infer.graphs as graphs
    import pvae.infer.matmul as matmul

    t_import = time.perf_counter()
    from torch._functorch._aot_autograd import graph_compile
    from torch._inductor import compile_fx, cpp_builder
    from torch._inductor import graph as lowering
    from torch._inductor import scheduler

    t_import = time.perf_counter() - t_import  # imported here, before the clock starts, to time its phases

    start = [time.perf_counter()]

    def timed(owner, name, label):
        fn = getattr(owner, name)

        @functools.wraps(fn)
        def wrapper(*a, **k):
            t0 = time.perf_counter() - start[0]
            try:
                return fn(*a, **k)
            finally:
                what = label if label != "g++" else _build(str(a[0]))
                print(f"{what:>28} {t0:7.2f} -> {time.perf_counter() - start[0]:7.2f} s", flush=True)
        setattr(owner, name, wrapper)

    for owner, name, label in ((graphs, "record", "recording (make_fx)"), (matmul, "use_fastest_matmuls", "product choice"),
                               (compile_fx, "compile_fx", "inductor (all of it)"),
                               (graph_compile, "aot_stage2_compile", "after AOT autograd"),
                               (lowering.GraphLowering, "run", "lowering"),
                               (scheduler.Scheduler, "__init__", "scheduler"),
                               (lowering.GraphLowering, "codegen", "code generation"),
                               (cpp_builder, "_run_compile_cmd", "g++")):
        timed(owner, name, label)
    x = pvae.load_dataset("fashion-mnist-sample", "train").x.reshape(-1, 784)[:1000]
    model = pvae.VAE(x_shape=(784,), latent_dim=50, hidden=(args.hidden, args.hidden), activation="tanh")
    start[0] = time.perf_counter()
    history = pvae.fit(model, x, objective=args.objective, epochs=2, batch_size=100, compile="step", progress=False)
    seconds = history.column("seconds")
    print(f"the first compiled step's extra cost: {seconds[0] - seconds[1]:.2f} s (epoch 1 {seconds[0]:.2f} s, "
          f"epoch 2 {seconds[1]:.2f} s), and importing inductor {t_import:.2f} s before it (a fresh process's "
          f"first compile pays both: {seconds[0] - seconds[1] + t_import:.2f} s)")


if __name__ == "__main__":
    main()
