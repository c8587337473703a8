"""AIS against the exact log p(x): a VAE with a 2-D latent, integrated by quadrature.

With two latent dimensions, log p(x) = log ∫ p(x|z) p(z) dz can be computed on a grid: a coarse
grid over [-6, 6]^2 finds each image's posterior, then a fine grid of ±10 posterior standard
deviations around it integrates p(x, z). This script trains a 784-200-200-2 tanh VAE, then
reports, per AIS setting, the mean error, mean |error| and largest |error| against that value
over the test images, with the wall time (and IS with k = 5000 for comparison). docs/ais.md's
table of AIS defaults comes from it.

    python examples/ais_exact_2d.py --dataset fashion-mnist --n-train 60000 --epochs 20
    python examples/ais_exact_2d.py --settings "dict(steps=500, leapfrog=10)" "dict()"
    python examples/ais_exact_2d.py --smoke
"""

import argparse
import ast
import math
import time

import torch

import pvae
from pvae.infer.ais import ais_log_likelihood


def quadrature_log_px(m, x, half=6.0, points=601, fine=801):
    """log p(x) of a 2-D latent pvae.VAE (standard normal prior) per row of x, by quadrature."""
    def log_joint(z, xb):  # z (N, 2), xb (B, D) -> (N, B)
        out = []
        for c in z.split(20000):
            lik = m.likelihood(m.decoder_params(c.float()[:, None, :]))
            out.append(lik.log_prob(xb.reshape((len(xb),) + tuple(m.x_shape))).double()
                       - 0.5 * (c[:, None, :] ** 2).sum(-1) - math.log(2 * math.pi))
        return torch.cat(out)

    with torch.no_grad():
        g = torch.linspace(-half, half, points, dtype=torch.float64)
        z = torch.cartesian_prod(g, g)
        w = torch.softmax(log_joint(z, x), 0)
        mu, sd = w.T @ z, (w.T @ z ** 2 - (w.T @ z) ** 2).clamp_min(1e-10).sqrt()
        out = []
        for i in range(len(x)):
            h = 10 * float(sd[i].max())
            axes = [torch.linspace(float(mu[i, d]) - h, float(mu[i, d]) + h, fine, dtype=torch.float64) for d in (0, 1)]
            cell = math.log(float(axes[0][1] - axes[0][0])) + math.log(float(axes[1][1] - axes[1][0]))
            out.append(torch.logsumexp(log_joint(torch.cartesian_prod(*axes), x[i:i + 1])[:, 0], 0) + cell)
        return torch.stack(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="fashion-mnist-sample")
    ap.add_argument("--n-train", type=int, default=None, help="training images (default: all)")
    ap.add_argument("--n-test", type=int, default=20)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=2, help="AIS runs per setting (seeds 10, 11, ...)")
    ap.add_argument("--settings", nargs="+", default=["dict(steps=500, leapfrog=10, step_size=0.05, mass='identity')",
                                                      "dict()"],
                    help="keyword arguments of pvae.infer.ais.ais_log_likelihood per setting, as Python dict "
                    "literals (dict() = the defaults)")
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    if args.smoke:
        args.n_train, args.n_test, args.epochs, args.repeats = 500, 3, 1, 1
        args.settings = ["dict(steps=20, step_size=0.05, mass='identity')"]
    train = pvae.load_dataset(args.dataset, "train", binarize="static", n=args.n_train)
    test = pvae.load_dataset(args.dataset, "test", binarize="static", n=args.n_test)
    torch.manual_seed(0)
    m = pvae.VAE(x_shape=(784,), latent_dim=2, hidden=(200, 200), activation="tanh")
    pvae.fit(m, train, epochs=args.epochs, batch_size=100, lr=1e-3, progress=False)
    m.eval()
    exact = quadrature_log_px(m, test.x.reshape(len(test), 784))
    torch.manual_seed(1)
    t0 = time.perf_counter()
    err = pvae.log_likelihood(m, test, k=5000, progress=False).double() - exact
    rows = [("IS k=5000", err, time.perf_counter() - t0)]
    for spec in args.settings:
        kw = _settings(spec)
        for rep in range(args.repeats):
            torch.manual_seed(10 + rep)
            t0 = time.perf_counter()
            ll = ais_log_likelihood(m, test, progress=False, **kw).double()
            rows.append((f"AIS {spec}", ll - exact, time.perf_counter() - t0))
    print(f"{args.dataset}, {len(train)} training images, {args.epochs} epochs; {len(test)} test images; "
          f"exact mean log p(x) {float(exact.mean()):.3f}\n")
    print("| estimator | mean error | mean abs error | max abs error | seconds |\n|---|---|---|---|---|")
    for name, e, sec in rows:
        print(f"| {name} | {float(e.mean()):+.3f} | {float(e.abs().mean()):.3f} | {float(e.abs().max()):.3f} | {sec:.1f} |")


def _settings(spec: str) -> dict:
    """A ``dict(...)`` literal of keyword arguments, read without running code."""
    tree = ast.parse(spec, mode="eval").body
    if not (isinstance(tree, ast.Call) and getattr(tree.func, "id", None) == "dict" and not tree.args):
        raise SystemExit(f"--settings takes dict(key=value, ...) literals, got {spec!r}")
    return {k.arg: ast.literal_eval(k.value) for k in tree.keywords}


if __name__ == "__main__":
    main()
