"""pvae against a hand-written PyTorch loop and the textbook Pyro loop, measured in one run.

Workload (the IWAE paper's net): 784-200-200-50 tanh MLP encoder and decoder, diagonal Gaussian
guide, Bernoulli likelihood, Adam, dynamically binarized Fashion-MNIST-shaped data.

    python benchmarks/bench_cpu.py                 # all workloads
    python benchmarks/bench_cpu.py --quick         # fewer steps
    python benchmarks/bench_cpu.py --means         # pvae's optional bf16 nets and torch.compile
    python benchmarks/bench_cpu.py --step          # the compiled step (compile="step") and denormals

For each workload (VAE k=1, IWAE k=5, IWAE k=50, at batch 100 and 1024) it times training steps
(mean seconds per step over a run from a fresh optimizer, the median of 3 such runs) of: `pvae` (pvae.fit's loop), `torch` (the same graph and objective written by hand) and `pyro`
(SVI + pyro.optim.Adam + Trace_ELBO / RenyiELBO(alpha=0), validation off), and per-datapoint
log p(x) with k=5000 (pvae.log_likelihood against a hand-written chunked estimator). It prints a
table of seconds per step and ratios pvae / torch against the targets, and writes bench_cpu.json
with the machine and versions.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
from torch import nn
from torch.nn import functional as F

import pvae

TARGETS = {("train", 1): 1.10, ("train", 50): 1.10, ("eval", 5000): 1.05}

try:  # optional: pythae on the k = 1 workloads, where installed
    import pythae  # noqa: F401

    HAVE_PYTHAE = True
except ImportError:
    HAVE_PYTHAE = False


class TorchVAE(nn.Module):
    """The reference: the same graph as pvae.VAE(784, 50, (200, 200), tanh, bernoulli), by hand."""

    def __init__(self):
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(784, 200), nn.Tanh(), nn.Linear(200, 200), nn.Tanh(), nn.Linear(200, 100))
        self.dec = nn.Sequential(nn.Linear(50, 200), nn.Tanh(), nn.Linear(200, 200), nn.Tanh(), nn.Linear(200, 784))

    def log_weights(self, x, k):
        loc, raw = self.enc(x).chunk(2, -1)
        scale = F.softplus(raw) + 1e-4
        z = loc + scale * torch.randn((k,) + loc.shape, device=loc.device)
        log_q = (-0.5 * ((z - loc) / scale) ** 2 - scale.log() - 0.5 * math.log(2 * math.pi)).sum(-1)
        log_pz = (-0.5 * z ** 2 - 0.5 * math.log(2 * math.pi)).sum(-1)
        logits = self.dec(z)
        log_px = -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(-1)
        return log_px + log_pz - log_q

    def loss(self, x, k):
        lw = self.log_weights(x, k)
        return -(torch.logsumexp(lw, 0) - math.log(k)).sum()


def copy_weights(src: TorchVAE, dst: pvae.VAE):
    """Start pvae from the reference's weights (same graph, so the same numbers)."""
    enc = [m for m in src.enc if isinstance(m, nn.Linear)]
    dec = [m for m in src.dec if isinstance(m, nn.Linear)]
    pe = [m for m in dst.encoder.net if isinstance(m, nn.Linear)] + [dst.q.linear]
    pd = [m for m in dst.decoder.net if isinstance(m, nn.Linear)]
    with torch.no_grad():
        for a, b in zip(enc + dec, pe + pd):
            b.weight.copy_(a.weight)
            b.bias.copy_(a.bias)


def time_torch(x, k, batch, steps):
    """Mean seconds per step over ``steps`` steps from a fresh optimizer (as pvae's epoch time is)."""
    m = TorchVAE()
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    t0 = time.perf_counter()
    for i in range(steps):
        xb = torch.bernoulli(x[(i * batch) % len(x):][:batch])
        opt.zero_grad(set_to_none=True)
        m.loss(xb, k).backward()
        opt.step()
    return (time.perf_counter() - t0) / steps


def time_pvae(x, k, batch, steps, **options):
    m = pvae.VAE(x_shape=(784,), latent_dim=50, hidden=(200, 200), activation="tanh")
    copy_weights(TorchVAE(), m)
    data = pvae.Data(x[: batch * steps], binarize="dynamic")
    h = pvae.fit(m, data, objective="elbo" if k == 1 else f"iwae:k={k}", epochs=1, batch_size=batch, progress=False,
                 **options)
    return h[0]["seconds"] / steps  # fit times whole epochs: the mean step


def means(x):
    """pvae's optional means, each against plain pvae in the same run: bf16 nets, torch.compile."""
    print("| workload | k | batch | fp32 s | bf16 s | bf16 / fp32 | compiled s | compiled / fp32 |\n|---|---|---|---|---|---|---|---|")
    out = []
    for k, batch, steps in ((1, 100, 30), (5, 1024, 8)):
        res = {}
        for name, opts in (("fp32", {}), ("bf16", {"precision": "bf16"}), ("compiled", {"compile": True})):
            time_pvae(x, k, batch, 2, **opts)  # warm up (and compile)
            res[name] = statistics.median(time_pvae(x, k, batch, steps, **opts) for _ in range(3))
        out.append({"k": k, "batch": batch, **res})
        print(f"| train | {k} | {batch} | {res['fp32']:.4f} | {res['bf16']:.4f} | {res['bf16'] / res['fp32']:.2f} | "
              f"{res['compiled']:.4f} | {res['compiled'] / res['fp32']:.2f} |", flush=True)
    # what bf16 does to the bound: per-datapoint log p(x) (k=500) of one model, same draws
    m = pvae.VAE(x_shape=(784,), latent_dim=50, hidden=(200, 200), activation="tanh")
    pvae.fit(m, pvae.Data(x[:5000], binarize="dynamic"), epochs=3, progress=False)
    xe = torch.bernoulli(x[-200:])
    lls = {}
    for prec in ("fp32", "bf16"):
        pvae.nn.nets.accelerate(m, prec)
        torch.manual_seed(1)
        lls[prec] = pvae.log_likelihood(m, xe, k=500, progress=False)
    d = (lls["bf16"] - lls["fp32"]).abs()
    print(f"bf16 nets move test log p(x) by {float(d.mean()):.4f} nats on average (max {float(d.max()):.3f}) "
          f"around {float(lls['fp32'].mean()):.2f}")
    return out


def time_pvae_steady(x, k, batch, steps, **options):
    """Seconds per step of pvae.fit's second epoch: the first one traces and compiles."""
    m = pvae.VAE(x_shape=(784,), latent_dim=50, hidden=(200, 200), activation="tanh")
    copy_weights(TorchVAE(), m)
    data = pvae.Data(x[: batch * steps], binarize="dynamic")
    h = pvae.fit(m, data, objective="elbo" if k == 1 else f"iwae:k={k}", epochs=2, batch_size=batch, progress=False,
                 **options)
    return h[1]["seconds"] / steps


def compiled_step(x, repeats: int = 5):
    """pvae eager, pvae compile="step" and the hand-written loop, interleaved in one run, medians."""
    print("| workload | k | batch | torch s | pvae eager s | pvae step s | eager / torch | step / torch | "
          "step / eager |\n|---|---|---|---|---|---|---|---|---|")
    out = []
    for k, batch, steps in ((1, 100, 40), (50, 100, 8)):
        times = {"torch": [], "eager": [], "step": []}
        for _ in range(repeats):  # interleaved: the machine's noise falls on every system alike
            times["torch"].append(time_torch(x, k, batch, steps))
            times["eager"].append(time_pvae_steady(x, k, batch, steps))
            times["step"].append(time_pvae_steady(x, k, batch, steps, compile="step"))
        res = {name: statistics.median(v) for name, v in times.items()}
        out.append({"k": k, "batch": batch, **res})
        print(f"| train | {k} | {batch} | {res['torch']:.4f} | {res['eager']:.4f} | {res['step']:.4f} | "
              f"{res['eager'] / res['torch']:.2f} | {res['step'] / res['torch']:.2f} | "
              f"{res['step'] / res['eager']:.2f} |", flush=True)
    # denormals: a late-training IWAE k=50 step, with and without flushing
    m = pvae.VAE(x_shape=(784,), latent_dim=50, hidden=(200, 200), activation="tanh")
    data = pvae.Data(x[:2000], binarize="dynamic")
    pvae.fit(m, data, objective="iwae:k=50", epochs=3, progress=False)
    late = {}
    for flush in (False, True, False, True):
        h = pvae.fit(m, data, objective="iwae:k=50", epochs=1, progress=False, flush_denormal=flush)
        late.setdefault(flush, []).append(h[0]["seconds"] / 20)
    print(f"IWAE k=50 after 3 epochs, s per step: denormals kept {min(late[False]):.4f}, flushed "
          f"{min(late[True]):.4f} (flushed / kept {min(late[True]) / min(late[False]):.2f})")
    return out


def time_pyro(x, k, batch, steps):
    m = TorchVAE()

    def model(xb):
        pyro.module("dec", m.dec)
        with pyro.plate("data", xb.shape[0]):
            z = pyro.sample("z", dist.Normal(xb.new_zeros(xb.shape[0], 50), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=m.dec(z), validate_args=False).to_event(1), obs=xb)

    def guide(xb):
        pyro.module("enc", m.enc)
        loc, raw = m.enc(xb).chunk(2, -1)
        with pyro.plate("data", xb.shape[0]):
            pyro.sample("z", dist.Normal(loc, F.softplus(raw) + 1e-4).to_event(1))

    pyro.clear_param_store()
    elbo = pyro.infer.Trace_ELBO() if k == 1 else pyro.infer.RenyiELBO(alpha=0, num_particles=k,
                                                                        vectorize_particles=True)
    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), elbo)
    with pyro.validation_enabled(False):
        svi.step(x[:batch])  # Pyro guesses the plate nesting on its first step: not timed
        t0 = time.perf_counter()
        for i in range(steps):
            svi.step(torch.bernoulli(x[(i * batch) % len(x):][:batch]))
    return (time.perf_counter() - t0) / steps


def time_pythae(x, k, batch, steps):
    """pythae's VAE (k = 1 only) with the same encoder/decoder nets: its model's forward + loss, one
    torch Adam step (pythae's trainer adds its own overhead on top)."""
    from pythae.models import VAE, VAEConfig
    from pythae.models.base.base_utils import ModelOutput
    from pythae.models.nn import BaseDecoder, BaseEncoder

    ref = TorchVAE()

    class Enc(BaseEncoder):
        def __init__(self):
            super().__init__()
            self.net = ref.enc

        def forward(self, x):
            loc, raw = self.net(x.reshape(x.shape[0], -1)).chunk(2, -1)
            return ModelOutput(embedding=loc, log_covariance=2 * torch.log(F.softplus(raw) + 1e-4))

    class Dec(BaseDecoder):
        def __init__(self):
            super().__init__()
            self.net = ref.dec

        def forward(self, z):
            return ModelOutput(reconstruction=torch.sigmoid(self.net(z)).reshape(z.shape[0], 1, 28, 28))

    m = VAE(VAEConfig(input_dim=(1, 28, 28), latent_dim=50, reconstruction_loss="bce"), encoder=Enc(), decoder=Dec())
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    t0 = time.perf_counter()
    for i in range(steps):
        xb = torch.bernoulli(x[(i * batch) % len(x):][:batch]).reshape(-1, 1, 28, 28)
        opt.zero_grad(set_to_none=True)
        m({"data": xb}).loss.backward()
        opt.step()
    return (time.perf_counter() - t0) / steps


def eval_torch(x, k, chunk=200):
    m = TorchVAE()
    t0 = time.perf_counter()
    with torch.no_grad():
        out = []
        for s in range(0, len(x), 100):
            xb = x[s:s + 100]
            parts = [torch.logsumexp(m.log_weights(xb, min(chunk, k - c)), 0) for c in range(0, k, chunk)]
            out.append(torch.logsumexp(torch.stack(parts), 0) - math.log(k))
    return time.perf_counter() - t0


def eval_pvae(x, k):
    m = pvae.VAE(x_shape=(784,), latent_dim=50, hidden=(200, 200), activation="tanh")
    t0 = time.perf_counter()
    pvae.log_likelihood(m, x, k=k, progress=False)
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default="bench_cpu.json")
    ap.add_argument("--means", action="store_true", help="time pvae's optional bf16 nets and torch.compile instead")
    ap.add_argument("--step", action="store_true", help="time the compiled step and denormal flushing instead")
    args = ap.parse_args()
    torch.manual_seed(0)
    x = pvae.load_dataset("fashion-mnist-sample", "train").x.reshape(-1, 784)
    x = x.repeat(3, 1)  # 15,000 images: enough for 10 steps at batch 1024
    if args.means:
        means(x)
        return
    if args.step:
        compiled_step(x, 3 if args.quick else 5)
        return
    rows = []
    for k in (1, 5, 50):
        for batch in (100, 1024):
            steps = (5 if args.quick else 30) if batch == 100 else (3 if args.quick else 8)
            if k == 50 and batch == 1024:
                steps = 2 if args.quick else 3
            res = {"pythae": float("nan")}
            runners = [("torch", time_torch), ("pvae", time_pvae), ("pyro", time_pyro)]
            if k == 1 and HAVE_PYTHAE:
                runners.append(("pythae", time_pythae))
            for name, fn in runners:
                fn(x, k, batch, 2)  # warm up
                res[name] = statistics.median(fn(x, k, batch, steps) for _ in range(3))  # median of 3 runs
            rows.append({"workload": "train", "k": k, "batch": batch, **res})
            print(rows[-1], flush=True)
    n_eval = 20 if args.quick else 100
    xe = torch.bernoulli(x[:n_eval])
    eval_torch(xe, 100), eval_pvae(xe, 100)  # warm up
    rows.append({"workload": "eval", "k": 5000, "batch": n_eval, "torch": eval_torch(xe, 5000),
                 "pvae": eval_pvae(xe, 5000), "pyro": float("nan"), "pythae": float("nan")})
    print(rows[-1], flush=True)

    lines = ["| workload | k | batch | torch s | pvae s | pyro s | pythae s | pvae / torch | pyro / torch | "
             "pythae / torch | target |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        r["ratio"] = r["pvae"] / r["torch"]
        r["pyro_ratio"] = r["pyro"] / r["torch"]
        r["pythae_ratio"] = r["pythae"] / r["torch"]
        target = TARGETS.get((r["workload"], r["k"]))
        verdict = "" if target is None else (f"<= {target} met" if r["ratio"] <= target else
                                             f"<= {target} MISSED by {100 * (r['ratio'] / target - 1):.0f}%")
        r["target"] = target
        if r["pythae"] == r["pythae"]:  # measured
            verdict += ("; faster than pythae" if r["pvae"] < r["pythae"] else "; SLOWER than pythae")
        lines.append(f"| {r['workload']} | {r['k']} | {r['batch']} | {r['torch']:.4f} | {r['pvae']:.4f} | "
                     f"{r['pyro']:.4f} | {r['pythae']:.4f} | {r['ratio']:.2f} | {r['pyro_ratio']:.2f} | "
                     f"{r['pythae_ratio']:.2f} | {verdict} |")
    machine = {"platform": platform.platform(), "processor": platform.processor(), "cpus": torch.get_num_threads(),
               "python": platform.python_version(), "torch": torch.__version__, "pyro": pyro.__version__,
               "pvae": pvae.__version__}
    print("\n".join(lines))
    print(machine)
    Path(args.out).write_text(json.dumps({"machine": machine, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
