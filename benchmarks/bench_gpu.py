"""pvae's compiled, CUDA-graph-captured step against a hand-written PyTorch loop on a GPU, eager and
captured (the floor: the same step in one CUDA graph), in one run, interleaved, medians.

Workload: the IWAE paper's 784-200-200-50 tanh VAE, Bernoulli likelihood, Adam 1e-3, data
resident on the device, dynamic binarization; batch 128 and 1024, k = 1 and k = 50; then
log p(x) with k = 5000 on 1,000 images. Targets (issue 20): pvae captured / hand-written captured
<= 1.15 for every training row, evaluation pvae / hand-written <= 1.10.

    python benchmarks/bench_gpu.py                   # on a machine with a CUDA device
    python benchmarks/bench_gpu.py --device cpu --quick   # the code paths on a CPU (no capture)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import platform
import statistics
import time
from pathlib import Path

import pyro
import torch

import pvae

HERE = Path(__file__).parent
TARGETS = {"train": 1.15, "eval": 1.10}


def _bench_cpu():
    spec = importlib.util.spec_from_file_location("bench_cpu", HERE / "bench_cpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def hand_written(x, k, batch, steps, device, capture: bool) -> float:
    """Seconds per step of the hand-written loop (gather, binarize, loss, backward, Adam), eager or
    captured in one CUDA graph after 3 warm-up steps."""
    m = _bench_cpu().TorchVAE().to(device)
    opt = torch.optim.Adam(m.parameters(), lr=1e-3, capturable=capture, fused=device.type == "cuda")
    idx = torch.arange(batch, device=device)

    def step():
        xb = x.index_select(0, idx)
        xb = (torch.rand_like(xb) < xb).float()
        opt.zero_grad(set_to_none=False)
        loss = m.loss(xb, k)
        loss.backward()
        opt.step()
        return loss

    def next_batch(i):
        idx.copy_(torch.arange(i * batch, (i + 1) * batch, device=device) % x.shape[0])

    for i in range(3):
        next_batch(i)
        step()
    run = step
    if capture:
        graph = torch.cuda.CUDAGraph()
        sync(device)
        with torch.cuda.graph(graph):
            step()
        run = graph.replay
    sync(device)
    t0 = time.perf_counter()
    for i in range(steps):
        next_batch(i)
        run()
    sync(device)
    return (time.perf_counter() - t0) / steps


def pvae_step(x, k, batch, steps, device, compile) -> float:
    """Seconds per step of pvae.fit's second epoch (the first traces, compiles and captures)."""
    m = pvae.VAE(x_shape=(784,), latent_dim=50, hidden=(200, 200), activation="tanh")
    data = pvae.Data(x[: batch * steps].cpu(), binarize="dynamic")
    h = pvae.fit(m, data, objective="elbo" if k == 1 else f"iwae:k={k}", epochs=2, batch_size=batch,
                 device=device, progress=False, compile=compile)
    return h[1]["seconds"] / steps


def hand_eval(x, k, device, chunk=2000) -> float:
    m = _bench_cpu().TorchVAE().to(device)
    sync(device)
    t0 = time.perf_counter()
    with torch.no_grad():
        for s in range(0, len(x), 100):
            xb = x[s:s + 100]
            parts = [torch.logsumexp(m.log_weights(xb, min(chunk, k - c)), 0) for c in range(0, k, chunk)]
            (torch.logsumexp(torch.stack(parts), 0) - math.log(k)).cpu()
    return time.perf_counter() - t0


def pvae_eval(x, k, device, model) -> float:
    sync(device)
    t0 = time.perf_counter()
    pvae.log_likelihood(model, x, k=k, progress=False, device=device, compile=True)
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="fewer steps, batch 128 only")
    ap.add_argument("--out", default="bench_gpu.json")
    args = ap.parse_args()
    device = torch.device(args.device)
    capture = device.type == "cuda"
    torch.manual_seed(0)
    x = pvae.load_dataset("fashion-mnist-sample", "train").x.reshape(-1, 784).repeat(4, 1).to(device)
    rows = []
    shapes = [(1, 128), (50, 128)] if args.quick else [(1, 128), (1, 1024), (50, 128), (50, 1024)]
    for k, batch in shapes:
        steps = max(3, min(40, x.shape[0] // batch)) if not args.quick else 3
        times = {"hand eager": [], "hand captured": [], "pvae eager": [], "pvae compiled": []}
        for _ in range(args.repeats):
            times["hand eager"].append(hand_written(x, k, batch, steps, device, capture=False))
            if capture:
                times["hand captured"].append(hand_written(x, k, batch, steps, device, capture=True))
            times["pvae eager"].append(pvae_step(x, k, batch, steps, device, compile=False))
            times["pvae compiled"].append(pvae_step(x, k, batch, steps, device, compile="step"))
        med = {n: 1000 * statistics.median(v) for n, v in times.items() if v}
        rows.append({"workload": f"train k={k} batch={batch}", "kind": "train", **med})
        print(json.dumps(rows[-1]), flush=True)
    n_eval = 100 if args.quick else 1000
    xe = torch.bernoulli(x[:n_eval])
    model = pvae.VAE(x_shape=(784,), latent_dim=50, hidden=(200, 200), activation="tanh").to(device)
    first = pvae_eval(xe, 5000, device, model)  # traces and compiles (kept on the model)
    ev = {"hand eager": [], "pvae compiled": []}
    for _ in range(args.repeats):
        ev["hand eager"].append(hand_eval(xe, 5000, device))
        ev["pvae compiled"].append(pvae_eval(xe, 5000, device, model))
    rows.append({"workload": f"eval k=5000, {n_eval} images (s)", "kind": "eval",
                 **{n: statistics.median(v) for n, v in ev.items()}, "pvae first call (compiles)": first})
    print(json.dumps(rows[-1]), flush=True)

    lines = ["| workload | hand eager | hand captured | pvae eager | pvae compiled | pvae / hand best | target |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        best_hand = min(v for n, v in r.items() if n.startswith("hand"))
        r["ratio"] = r["pvae compiled"] / best_hand
        target = TARGETS[r["kind"]]
        verdict = "met" if r["ratio"] <= target else f"MISSED ({r['ratio']:.2f})"
        cell = lambda n: f"{r[n]:.3f}" if n in r else "—"  # noqa: E731
        lines.append(f"| {r['workload']} | {cell('hand eager')} | {cell('hand captured')} | {cell('pvae eager')} | "
                     f"{cell('pvae compiled')} | {r['ratio']:.2f} | <= {target}: {verdict} |")
    machine = {"platform": platform.platform(), "device": torch.cuda.get_device_name() if capture else "cpu",
               "torch": torch.__version__, "pyro": pyro.__version__, "pvae": pvae.__version__,
               "units": "train: ms per step; eval: seconds"}
    print("\n".join(lines))
    print(machine)
    Path(args.out).write_text(json.dumps({"machine": machine, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
