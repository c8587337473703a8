"""A run's report: evaluation, results.json, summary.md and the figures that fit the model.

`report` is what ``pvae train`` and ``pvae eval`` write, and what [`pvae.fit`][pvae.fit] writes
with ``eval_k=``. Results are written before any figure is drawn, and a figure that fails costs
only that figure (one line on stderr). Non-finite numbers are written as ``null`` with a note
saying why (``Infinity`` is not JSON).
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path


class _SafePlots:
    """pvae.analysis.plots where a failing figure costs only that figure: one line on stderr, no traceback."""

    def __init__(self):
        from pvae.analysis import plots

        self._plots = plots

    def __getattr__(self, name):
        fn = getattr(self._plots, name)

        def draw(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - results are already written; say what is missing
                print(f"pvae: figure {name} not drawn: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                      file=sys.stderr)
        return draw


def _figures(model, test, x, run_dir: Path) -> None:
    """The figures that fit ``model``: each variant draws what it has the methods for."""
    plots = _SafePlots()

    y = test.y
    if getattr(model, "needs_labels", False) and not hasattr(model, "classify"):
        n = min(10, x.shape[0])
        plots.image_grid([x[:n].to(model.device), model.reconstruct(x[:n].to(model.device), y[:n].to(model.device))],
                         run_dir / "reconstructions.png", titles=["input", "reconstruction"])
    elif hasattr(model, "complete"):  # structured output: the hidden part predicted from the visible
        plots.completions(model, x, path=run_dir / "completions.png")
    elif hasattr(model, "reconstruct"):
        plots.reconstructions(model, x, path=run_dir / "reconstructions.png")
    if hasattr(model, "num_classes") and getattr(model, "needs_labels", False):
        plots.class_samples(model, path=run_dir / "samples.png")
    elif hasattr(model, "sample") and getattr(model, "can_sample", True):
        plots.samples(model, path=run_dir / "samples.png")
    latent_dim = getattr(model, "latent_dim", None)
    continuous = (hasattr(model, "encode") and hasattr(model, "decode") and latent_dim
                  and not getattr(model, "needs_labels", False) and not hasattr(model, "complete"))
    if continuous:
        plots.latent_space(model, x, y, path=run_dir / "latent_space.png", max_points=x.shape[0],
                           class_names=getattr(test, "classes", None))
        if x.shape[0] >= 2:
            plots.interpolation(model, x[0], x[1], path=run_dir / "interpolation.png")
        if latent_dim == 2 and hasattr(model, "sample"):
            plots.latent_map(model, path=run_dir / "latent_map.png")
        if latent_dim >= 2:
            plots.traversal(model, x[0], path=run_dir / "traversal.png", data=x[:1000])


def report(model, test, run_dir=None, k: int = 5000, history=None, progress=True, seed: int = 0, ais=None) -> dict:
    """Evaluate ``model`` on ``test``, draw the figures, write results.json and summary.md into
    ``run_dir``: what ``pvae train`` writes, in one call. Returns the results (a dict).

    ``model`` may be the [`History`][pvae.training.history.History] that [`pvae.fit`][pvae.fit] returned: its model,
    run folder and training curves are used (``pvae.report(pvae.fit(m, train, run_dir=...), test)``).
    ``ais``: also AIS log p(x), e.g. ``{"steps": 500, "chains": 16, "leapfrog": 10}``.

    Point-mass guides (AE, VQ-VAE) have no density to importance-sample with: they are scored by
    their reconstruction term alone (k = 1). A semi-supervised model is scored on unlabelled test
    data (log p(x), y summed out by sampling q(y|x)) and by its classifier's test accuracy.
    """
    import torch

    from pvae.analysis.evaluation import analysed, evaluate, point_mass_sites
    from pvae.data.datasets import Data, as_tensors
    from pvae.infer.pair import as_pair
    from pvae.infer.program import check_ais
    from pvae.util.files import dumps, finite, write_text

    if hasattr(model, "model") and isinstance(model, list):  # a History
        history, run_dir, model = history if history is not None else model, run_dir or model.run_dir, model.model
    if run_dir is None:
        raise ValueError("report needs a run_dir to write into (or the History of a fit with run_dir=...)")
    run_dir = Path(run_dir)
    if not hasattr(test, "eval_x"):
        test = Data(*as_tensors(test)[:2])

    torch.manual_seed(seed)
    t0 = time.perf_counter()
    semi = getattr(model, "missing_labels", False)
    labels = torch.full((len(test),), -1) if semi else None
    program = analysed(as_pair(model), test, labels, getattr(model, "_pvae_data_plate", None))
    point_mass = point_mass_sites(model, program)
    if point_mass and ais is not None:  # said before any work
        raise ValueError(f"AIS's log p(x) needs a guide with a density, and {type(model).__name__}'s guide puts a "
                         f"point mass (Delta) on {', '.join(point_mass)}: evaluate it without AIS (it reports log "
                         "p(x|z) at the point)")
    if ais is not None:
        check_ais(program)
    with warnings.catch_warnings():  # said in the results' notes (and the table the CLI prints), not twice
        warnings.filterwarnings("ignore", message="PSIS k-hat exceeds 0.7")
        res = evaluate(model, test, k=1 if point_mass else k, progress=progress, khat=not point_mass, labels=labels,
                       data_plate=getattr(model, "_pvae_data_plate", None))
    s = dict(res["summary"], eval_seconds=time.perf_counter() - t0)
    if point_mass:
        s = {key: v for key, v in s.items() if key not in ("log_px", "log_px_se", "log_px_mc_se", "elbo", "kl", "ess")}
    elif ais is not None:  # annealed importance sampling next to importance sampling
        from pvae.infer.importance import log_likelihood, standard_error

        t1 = time.perf_counter()
        ll, mc_se = log_likelihood(model, test, method="ais", progress=progress, labels=labels,
                                   data_plate=getattr(model, "_pvae_data_plate", None), with_se=True, **ais)
        s.update(log_px_ais=float(ll.mean()), log_px_ais_se=standard_error(ll),
                 log_px_ais_mc_se=float(mc_se.double().pow(2).sum().sqrt() / ll.numel()),
                 ais_minus_is=float((ll - res["log_px"]).mean()), ais_seconds=time.perf_counter() - t1,
                 ais_steps=ais["steps"], ais_chains=ais["chains"])
    x = test.eval_x()
    x = x.reshape((len(test),) + tuple(model.x_shape)) if hasattr(model, "x_shape") else x
    if semi:
        s["accuracy"] = model.accuracy(x, test.y)
    if hasattr(model, "reconstruct") and not (getattr(model, "needs_labels", False) and not semi):
        with torch.no_grad():  # in batches: mean squared error of reconstruct(x) against x
            s["recon_mse"] = sum(float(((model.reconstruct(xb.to(model.device)).cpu() - xb) ** 2).sum())
                                 for xb in x.split(1000)) / x.numel()
    if hasattr(model, "temperature"):
        s["temperature"] = model.temperature
    code_prior = getattr(model, "_pvae_code_prior", None)
    if code_prior is not None:
        s.update(code_nll=code_prior["test_nll"], code_nll_uniform=code_prior["uniform_nll"],
                 codes_used=code_prior["codes_used"])
    if history:
        s["train_seconds"] = sum(r["seconds"] for r in history)
        s["epochs"] = history[-1]["epoch"]
    notes = list(s.get("notes", []))
    s = finite(s, notes)
    if notes:
        s["notes"] = notes
    write_text(run_dir / "results.json", dumps(s))  # results first: a figure cannot lose them
    plots = _SafePlots()
    _figures(model, test, x, run_dir)
    if "khat" in res:
        plots.khat_histogram(res["khat"], path=run_dir / "khat.png")
    if history:
        plots.training_curves(history, path=run_dir / "training_curves.png")
    write_text(run_dir / "summary.md", summary_markdown(s, run_dir))
    return s


ROWS = [("accuracy", "test accuracy of q(y|x)"), ("log_px", "test log p(x) (nats, importance-sampled)"),
        ("log_px_se", "  standard error of that mean (over test datapoints)"),
        ("log_px_mc_se", "  of which Monte Carlo (the sampler's own)"),
        ("log_px_ais", "test log p(x) by AIS (nats)"), ("log_px_ais_se", "  standard error of that mean"),
        ("log_px_ais_mc_se", "  of which Monte Carlo (over AIS chains)"),
        ("ais_minus_is", "  AIS minus IS, mean per datapoint"), ("ais_steps", "  AIS steps"),
        ("ais_chains", "  AIS chains"), ("ais_seconds", "  AIS seconds"), ("elbo", "test ELBO"),
        ("recon", "  reconstruction E_q[log p(x|z)]"), ("recon_mse", "reconstruction mean squared error"), ("kl", "  KL(q(z|x) || p(z))"),
        ("active_units", "active units (Cov_x E_q[u] > 0.01)"), ("ess", "importance-sampling ESS"),
        ("khat_median", "PSIS k-hat, median"), ("khat_max", "PSIS k-hat, max"),
        ("khat_gt_0_7", "share of k-hat > 0.7"), ("temperature", "Gumbel-softmax temperature at the end"),
        ("code_nll", "code prior: test NLL of the codes (nats per datapoint)"),
        ("code_nll_uniform", "  uniform prior over the codes, for comparison"), ("codes_used", "  codes in use"),
        ("train_seconds", "training seconds"),
        ("eval_seconds", "evaluation seconds")]


def results_table(s: dict) -> str:
    lines = ["| quantity | value |", "|---|---|"]
    for key, label in ROWS:
        if key in s:
            v = s[key]
            cell = label.replace("|", "\\|")  # a bare | inside a cell would end it
            value = "n/a" if v is None else v if isinstance(v, int) else f"{v:.3f}"
            lines.append(f"| {cell} | {value} |")
    lines += [f"\nNote: {note}." for note in s.get("notes", [])]
    return "\n".join(lines)


def summary_markdown(s: dict, run_dir: Path) -> str:
    figs = [f for f in ("reconstructions", "completions", "samples", "latent_space", "latent_map", "interpolation",
                        "traversal", "training_curves", "khat") if (run_dir / f"{f}.png").exists()]
    return (f"# pvae run `{run_dir.name}`\n\n{s['n']} test datapoints, k = {s['k']} importance samples.\n\n"
            + results_table(s) + "\n\n" + "\n".join(f"![{f}]({f}.png)" for f in figs) + "\n")
