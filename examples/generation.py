"""Generation where the prior is not enough: a VQ-VAE with a learned code prior, and an
autoencoder sampled through a Gaussian mixture fitted to its codes.

    python examples/generation.py                       # the embedded sample, ~2 minutes
    python examples/generation.py --dataset fashion-mnist --epochs 10
"""

import argparse
import json
from pathlib import Path

import torch

import pvae


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="fashion-mnist-sample")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--prior-epochs", type=int, default=20)
    ap.add_argument("--num-latents", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/generation")
    ap.add_argument("--smoke", action="store_true", help="a seconds-long run (the tests use it)")
    args = ap.parse_args(argv)
    n = 500 if args.smoke else None
    if args.smoke:
        args.epochs, args.prior_epochs = 1, 1
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train = pvae.load_dataset(args.dataset, "train", binarize="dynamic", n=n)
    test = pvae.load_dataset(args.dataset, "test", binarize="static", n=1000)

    torch.manual_seed(args.seed)
    vq = pvae.VQVAE(x_shape=(1, 28, 28), num_codes=64, code_dim=8, hidden=(256,), num_latents=args.num_latents)
    pvae.fit(vq, train, epochs=args.epochs, seed=args.seed, progress=False)
    r = pvae.fit_code_prior(vq, train, test, epochs=args.prior_epochs, seed=args.seed, progress=False)
    result = {"vqvae": {k: r[k] for k in ("test_nll", "uniform_nll", "codes_used")}}
    print(f"VQ-VAE code prior: test NLL {r['test_nll']:.2f} nats per image, uniform {r['uniform_nll']:.2f}, "
          f"{r['codes_used']} of 64 codes in use")

    torch.manual_seed(args.seed)
    ae = pvae.AE(x_shape=(1, 28, 28), latent_dim=16, hidden=(256,))
    pvae.fit(ae, train, epochs=args.epochs, seed=args.seed, progress=False)
    sampler = pvae.fit_sampler(ae, train, kind="gmm", components=10, seed=args.seed)
    result["ae_gmm"] = {"components": 10, "train_log_likelihood": sampler.density.log_likelihood[-1]}
    print(f"AE + GMM sampler: mean log-likelihood of the training codes {sampler.density.log_likelihood[-1]:.2f}")

    torch.manual_seed(args.seed)
    rows = [vq.sample(8), vq.sample(8), sampler.sample(8, seed=args.seed), sampler.sample(8, seed=args.seed + 1)]
    pvae.plots.image_grid(rows, out / "samples.png", titles=["VQ-VAE + code prior", "", "AE + GMM sampler", ""])
    (out / "generation.json").write_text(json.dumps(result, indent=1))
    print(f"wrote {out / 'samples.png'}")


if __name__ == "__main__":
    main()
