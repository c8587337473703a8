"""``pvae apply RUN --task anomaly | denoise | inpaint``."""

from __future__ import annotations

import json
import math

from pvae.cli.common import _open_run, _run_data, output_path


def cmd_apply(args):
    """Anomaly detection, denoising or inpainting with a trained run, on its test data."""
    import torch

    from pvae.analysis import plots
    from pvae.analysis.applications import anomaly_scores, auroc, corrupt, inpaint
    from pvae.util.files import new_path, write_text
    from pvae.util.tensors import device_of

    run_dir, model = _open_run(args)
    test = _run_data(run_dir, args)
    x = test.eval_x().reshape(len(test), -1).to(device_of(model))
    out = output_path(args.out, run_dir / f"{args.task}.png", also=() if args.out else (".json",))
    record = new_path(run_dir / f"{args.task}.json") if args.out else out.with_suffix(".json")
    torch.manual_seed(args.seed)
    if args.task == "anomaly":
        if args.anomaly_class is None:  # the class the run left out of training (--exclude-class)
            args.anomaly_class = getattr(args, "exclude_class", None)
        if args.anomaly_class is None or test.y is None:
            raise ValueError("--task anomaly needs --anomaly-class C and a labelled test set")
        present = sorted(int(c) for c in test.y.unique())
        if args.anomaly_class not in present or len(present) == 1:
            raise ValueError(f"--anomaly-class {args.anomaly_class}: the test data hold classes {present}, and AUROC needs "
                             "that class and at least one other among them")
        if getattr(model, "point_mass", False) or getattr(model, "needs_labels", False):
            raise ValueError(f"anomaly scores are -log p(x): {type(model).__name__} has no unconditional "
                             "log p(x) to estimate")
        scores = anomaly_scores(model, x, k=args.k, progress=not args.quiet)
        is_anomaly = test.y == args.anomaly_class
        result = {"task": "anomaly", "anomaly_class": args.anomaly_class, "k": args.k, "n": len(test),
                  "auroc": auroc(scores, is_anomaly), "mean_score_anomaly": float(scores[is_anomaly].mean()),
                  "mean_score_normal": float(scores[~is_anomaly].mean())}
        plots.score_histogram(scores, is_anomaly, path=out)
        print(f"AUROC {result['auroc']:.3f}: class {args.anomaly_class} scores -log p(x) "
              f"{result['mean_score_anomaly']:.1f} on average, the rest {result['mean_score_normal']:.1f}")
    else:
        if args.task == "denoise" and (not hasattr(model, "reconstruct") or getattr(model, "needs_labels", False)):
            raise ValueError(f"--task {args.task} needs a method reconstruct(x) -> E[x | z = encode(x)] (x: a batch of "
                             f"datapoints, returned in the same shape); {type(model).__name__} has none: add one "
                             "(docs/tutorials/own-pyro-program.md), or use --task anomaly")
        if args.task == "denoise":
            noisy = corrupt(x, args.noise, kind=args.corruption, seed=args.seed)
            done, ref = model.reconstruct(noisy).reshape(x.shape), noisy
            mask = torch.ones_like(x, dtype=torch.bool)
            plots.denoising(x, noisy, {type(model).__name__: done}, path=out)
        else:
            needs = ("posterior", "prior", "decoder_params", "likelihood", "x_shape")
            if not all(hasattr(model, n) for n in needs) or getattr(model, "needs_labels", False):
                raise ValueError(f"inpainting needs pvae's VAE interface (posterior(x), prior(n), decoder_params(z), "
                                 f"likelihood, x_shape) with no labels; {type(model).__name__} lacks "
                                 f"{', '.join(n for n in needs if not hasattr(model, n)) or 'an unconditional posterior'}: "
                                 "train a pvae.VAE "
                                 "(--model vae), or use --task denoise or anomaly")
            side = math.isqrt(x.shape[1])
            observed = torch.ones(len(test), side, side, dtype=torch.bool, device=x.device)
            observed[:, side // 2:] = False  # the bottom half is missing
            observed = observed.reshape(len(test), -1)
            done = inpaint(model, x, observed, k=args.k)
            ref = x.mean(0, keepdim=True).expand_as(x)  # the mean test image (compared on missing pixels only)
            mask = ~observed
            plots.image_grid([x[:10], (x * observed)[:10], done[:10]], out, titles=["original", "observed", "inpainted"])
        err = float(((done - x)[mask] ** 2).mean())
        ref_err = float(((ref - x)[mask] ** 2).mean())
        what = "corrupted input" if args.task == "denoise" else "mean test image"
        result = {"task": args.task, "n": len(test), "mse": err, "mse_reference": ref_err, "reference": what}
        print(f"{args.task}: squared error {err:.4f} against the clean images ({what}: {ref_err:.4f})")
    write_text(record, json.dumps(result, indent=1))
    print(f"wrote {out} and {record}")
