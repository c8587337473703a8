"""AIS's target traced only against traced and compiled through inductor, measured in one run.

    python benchmarks/bench_ais.py                    # 200 steps x 16 chains x 2 leapfrog, 3 rounds
    python benchmarks/bench_ais.py --steps 500 --rounds 2

The IWAE paper's 784-200-200-50 tanh VAE (untrained: the evaluation's cost does not depend on the
weights), 100 dynamically binarized Fashion-MNIST images, `pvae.log_likelihood(method="ais")` with
``compile=False`` and ``compile=True`` in alternation after one warm-up call of each (the compile
and the first trace happen there), and IS with k = 5000 (pvae's default call) for the ratio the
issue asks about (AIS 500 x 16 within 5x IS). Prints seconds per run, milliseconds per density
evaluation (steps x leapfrog) and the ratios; ``--out FILE`` writes them as JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

import pvae


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.manual_seed(0)
    x = pvae.load_dataset("fashion-mnist-sample", "train").x.reshape(-1, 784)
    xe = torch.bernoulli(x[:100])
    model = pvae.VAE(x_shape=(784,), latent_dim=50, hidden=(200, 200), activation="tanh")

    def timed(fn) -> float:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    first = {c: timed(lambda c=c: pvae.log_likelihood(model, xe, method="ais", steps=20, compile=c, progress=False))
             for c in (False, True)}
    pvae.log_likelihood(model, xe, k=5000, progress=False)
    runs: dict = {"traced": [], "compiled": [], "IS k=5000": []}
    for _ in range(args.rounds):
        for name, c in (("traced", False), ("compiled", True)):
            runs[name].append(timed(lambda c=c: pvae.log_likelihood(model, xe, method="ais", steps=args.steps,
                                                                    compile=c, progress=False)))
        runs["IS k=5000"].append(timed(lambda: pvae.log_likelihood(model, xe, k=5000, progress=False)))
    med = {name: statistics.median(v) for name, v in runs.items()}
    evaluations = args.steps * 2
    out = {"machine": platform.processor() or platform.machine(), "torch": torch.__version__,
           "threads": torch.get_num_threads(), "steps": args.steps, "chains": 16, "leapfrog": 2, "images": 100,
           "runs_s": runs, "median_s": med, "ms_per_evaluation": {n: 1000 * med[n] / evaluations
                                                                  for n in ("traced", "compiled")},
           "first_call_20_steps_s": {"traced": first[False], "compiled": first[True]},
           "compiled_over_traced": med["compiled"] / med["traced"],
           "ais_500_over_is_estimate": {n: med[n] * 500 / args.steps / med["IS k=5000"] for n in ("traced", "compiled")}}
    for name, v in runs.items():
        print(f"{name:>10}: " + ", ".join(f"{t:.2f}" for t in v) + f" s (median {med[name]:.2f})")
    print(f"compiled / traced: {out['compiled_over_traced']:.2f}; ms per evaluation: "
          f"{out['ms_per_evaluation']['traced']:.1f} traced, {out['ms_per_evaluation']['compiled']:.1f} compiled")
    print("AIS 500x16x2 / IS k=5000, scaled from these runs: " + ", ".join(
        f"{n} {r:.2f}" for n, r in out["ais_500_over_is_estimate"].items()))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
