"""``pvae sample RUN``: new datapoints from the run's model (its prior, or a fitted sampler)."""

from __future__ import annotations

import math

from pvae.cli.common import _open_run, _run_data, output_path


def cmd_sample(args):
    import torch

    from pvae.analysis import plots
    from pvae.util.files import atomic_write

    run_dir, model = _open_run(args)
    if args.sampler == "gmm":  # an ex-post sampler fitted to the codes of the run's training data
        from pvae.analysis.samplers import fit_sampler

        sampler = fit_sampler(model, _run_data(run_dir, args, "train"), kind="gmm", components=args.components,
                              seed=args.seed)
        draw = lambda n: sampler.sample(n, seed=args.seed)  # noqa: E731
    elif not hasattr(model, "sample") or not getattr(model, "can_sample", True):
        why = {"StructuredCVAE": "it predicts hidden quadrants from visible ones (StructuredCVAE.complete)",
               "VQVAE": "its prior over codes is not learned (train with --code-prior-epochs > 0, or "
                        "pvae.fit_code_prior)",
               "AE": "a point-mass autoencoder has no generative prior (use --sampler gmm)"}.get(type(model).__name__)
        raise ValueError(f"{type(model).__name__} cannot sample: {why}" if why else
                         f"{type(model).__name__} has no method sample(n) -> a tensor of n new datapoints: add one "
                         "(docs/tutorials/own-pyro-program.md), or fit a sampler to its codes with --sampler gmm "
                         "(which needs encode(x) -> posterior means and decode(z) -> E[x|z])")
    else:
        def draw(n):
            torch.manual_seed(args.seed)
            return model.sample(n)
    name = f"samples-n{args.n}-seed{args.seed}" + ("-gmm" if args.sampler == "gmm" else "")
    out = output_path(args.out, run_dir / f"{name}.png", also=(".pt",) if args.save_tensor else ())
    images = draw(args.n).cpu()
    ncol = math.ceil(math.sqrt(args.n))
    plots.image_grid([images[i:i + ncol] for i in range(0, len(images), ncol)], out)
    if args.save_tensor:
        atomic_write(out.with_suffix(".pt"), lambda tmp: torch.save(images, tmp))
    print(f"wrote {out}" + (f" and {out.with_suffix('.pt')}" if args.save_tensor else ""))
