"""How far is importance sampling from the truth? IS, AIS and BDMC on VAEs trained two ways.

For each objective (default: the ELBO and IWAE with k = 50, on the IWAE paper's 784-200-200-50
tanh VAE), train, then report on the first test images:

- importance-sampled log p(x) with k = 5000 (pvae's default), with its standard error;
- annealed importance sampling (HMC transitions) on the same images, with its standard error,
  and the mean per-image difference AIS - IS;
- BDMC on images simulated from the trained model: the forward-AIS lower bound, the
  reverse-AIS upper bound and their gap (how far AIS with these settings can be from the truth);
- the wall time of each.

    python examples/ais_vs_is.py --dataset fashion-mnist --epochs 10     # issue 3's configuration
    python examples/ais_vs_is.py --smoke
"""

import argparse
import time

import torch

import pvae


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="fashion-mnist-sample")
    ap.add_argument("--objectives", nargs="+", default=["elbo", "iwae:k=50"])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--n-is", type=int, default=1000, help="test images for IS")
    ap.add_argument("--n-ais", type=int, default=200, help="test images for AIS (the first of the IS ones)")
    ap.add_argument("--steps", type=int, default=1800)
    ap.add_argument("--leapfrog", type=int, default=2)
    ap.add_argument("--chains", type=int, default=16)
    ap.add_argument("--n-bdmc", type=int, default=100)
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    if args.smoke:
        args.epochs, args.n_is, args.n_ais, args.steps, args.chains, args.n_bdmc = 1, 20, 5, 5, 2, 5
    train = pvae.load_dataset(args.dataset, "train", binarize="dynamic", n=500 if args.smoke else None)
    test = pvae.load_dataset(args.dataset, "test", binarize="dynamic", n=args.n_is)
    x = test.eval_x()
    rows = []
    for spec in args.objectives:
        torch.manual_seed(0)
        m = pvae.VAE(x_shape=(784,), latent_dim=50, hidden=(200, 200), activation="tanh")
        t0 = time.perf_counter()
        pvae.fit(m, train, objective=spec, epochs=args.epochs, batch_size=100, progress=False)
        train_s = time.perf_counter() - t0
        torch.manual_seed(0)
        t0 = time.perf_counter()
        ev = pvae.evaluate(m, x, k=5000, progress=False, units=False)
        is_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        ais = pvae.log_likelihood(m, x[:args.n_ais], method="ais", steps=args.steps, chains=args.chains,
                                 leapfrog=args.leapfrog, progress=False)
        ais_s = time.perf_counter() - t0
        is_sub = ev["log_px"][:args.n_ais]
        t0 = time.perf_counter()
        b = pvae.bdmc(m, n=args.n_bdmc, steps=args.steps, chains=args.chains, leapfrog=args.leapfrog,
                      progress=False)
        bdmc_s = time.perf_counter() - t0
        from pvae.infer.importance import standard_error as se
        rows.append((spec, train_s, ev["summary"]["log_px"], ev["summary"]["log_px_se"], float(is_sub.mean()),
                     se(is_sub), float(ais.mean()), se(ais), float((ais - is_sub).mean()), se(ais - is_sub),
                     ev["summary"]["khat_gt_0_7"], b["summary"]["lower"], b["summary"]["upper"], b["summary"]["gap"],
                     is_s, ais_s, bdmc_s))
    print(f"{args.dataset}, {args.epochs} epochs; IS k=5000 on {len(x)} test images; AIS ({args.steps} steps, "
          f"{args.chains} chains, {args.leapfrog} leapfrog steps) on the first {args.n_ais}; BDMC on {args.n_bdmc} simulated\n")
    print("| objective | train s | IS all | IS (AIS images) | AIS | AIS - IS | share k-hat > 0.7 | BDMC lower | "
          "BDMC upper | BDMC gap | IS s | AIS s | BDMC s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]:.0f} | {r[2]:.2f} ± {r[3]:.2f} | {r[4]:.2f} ± {r[5]:.2f} | {r[6]:.2f} ± {r[7]:.2f} | "
              f"{r[8]:+.3f} ± {r[9]:.3f} | {r[10]:.2f} | {r[11]:.2f} | {r[12]:.2f} | {r[13]:.3f} | {r[14]:.0f} | "
              f"{r[15]:.0f} | {r[16]:.0f} |")


if __name__ == "__main__":
    main()
