"""Compare inference objectives on one model configuration: same seed, same data, same budget,
same evaluator. ``pvae.compare(...)`` and ``pvae compare``.

For every objective spec (``"elbo"``, ``"iwae:k=50"``, ``"renyi:k=5,alpha=0.5"``, ...) the model
is built afresh from the same seed (so every run starts from the same weights), trained by
[`pvae.fit`][pvae.fit] with identical data order, and evaluated by [`pvae.evaluate`][pvae.evaluate] with the same
k and the same evaluation draws. The table (markdown, CSV, JSON) has: objective, k, training
seconds, test log p(x), test ELBO, KL, active units, median and max PSIS k-hat, and the share
of k-hat > 0.7; the figures overlay learning curves, log p(x) per objective, and k-hat.
"""

from __future__ import annotations

import copy
import csv
import io
import time

import pyro
import torch

from pvae.analysis.evaluation import evaluate
from pvae.data.datasets import binarize as binarize_x
from pvae.infer.inputs import arrange, own_model
from pvae.infer.objectives import check_objective, configure
from pvae.infer.objectives import objective as make_objective
from pvae.infer.pair import as_pair
from pvae.infer.program import analyse, check_ais, check_density, check_per_datapoint
from pvae.training.fit import fit
from pvae.training.runs import RunLock, fresh, prepare
from pvae.util.files import atomic_write, dumps, write_text
from pvae.util.validate import check_positive_int

COLUMNS = [("objective", "objective"), ("k", "k"), ("train_seconds", "train s"), ("log_px", "test log p(x)"),
           ("log_px_se", "± s.e."),
           ("elbo", "test ELBO"), ("kl", "KL"), ("active_units", "active units"), ("khat_median", "k-hat median"),
           ("khat_max", "k-hat max"), ("khat_gt_0_7", "share k-hat > 0.7")]


def _slug(spec: str) -> str:
    return "".join(c if c.isalnum() or c in "-." else "_" for c in spec)


AIS_COLUMNS = [("log_px_ais", "AIS log p(x)"), ("log_px_ais_se", "± s.e. (AIS)"),
               ("log_px_ais_mc_se", "of which chains")]


def markdown_table(rows) -> str:
    def fmt(v):
        return str(v) if isinstance(v, (str, int)) else f"{v:.2f}" if abs(v) >= 10 else f"{v:.3f}"

    cols = COLUMNS + [c for c in AIS_COLUMNS if rows and c[0] in rows[0]]
    lines = ["| " + " | ".join(h for _, h in cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r[key]) for key, _ in cols) + " |" for r in rows]
    return "\n".join(lines)


def check_all(build, train, specs, *, seed: int = 0, batch_size: int = 100, data_plate=None, ais=None) -> None:
    """Every objective against a freshly built model, on the first batch, before any training:
    a spec that does not suit the model fails here with the check's one line, naming the spec."""
    torch.manual_seed(seed)
    with pyro.get_param_store().scope():
        pair = as_pair(build())
        inputs, binarize = arrange(pair, train, what="training data")
        first = inputs.x[:batch_size]  # as training sees it: dynamic binarization draws 0/1 values
        args, kwargs = inputs.take(slice(0, batch_size), x=binarize_x(first, "static") if binarize == "dynamic" else first)
        program = analyse(pair.model, pair.guide, args, kwargs, data_plate=data_plate, module=pair,
                          trusted=own_model(pair), check_vectorize=False)
        check_density(pair, program, "compare ranks objectives by test log p(x), which")
        check_per_datapoint(pair, program, "compare's test log p(x)")
        if ais is not None:
            check_ais(program)
        for spec in specs:
            elbo = make_objective(spec)
            configure(elbo, program)
            try:
                check_objective(elbo, pair, program, args, kwargs)
            except ValueError as e:
                raise ValueError(f"objective {spec!r}: {e}") from None


def differences(runs: dict) -> str:
    """Each objective's test log p(x) against the first's, paired over the same test datapoints:
    the mean difference, its standard error, and whether it lies within the evaluator's
    uncertainty (|difference| < 2 standard errors)."""
    specs = list(runs)
    if len(specs) < 2:
        return ""
    ref = runs[specs[0]]["eval"]["log_px"].double()
    lines = [f"Paired differences in test log p(x) against {specs[0]} (same test datapoints):", ""]
    for spec in specs[1:]:
        d = runs[spec]["eval"]["log_px"].double() - ref
        se = float(d.std() / d.numel() ** 0.5) if d.numel() > 1 else float("nan")
        within = abs(float(d.mean())) < 2 * se
        lines.append(f"- {spec}: {float(d.mean()):+.3f} ± {se:.3f} nats"
                     + (" (within the evaluator's uncertainty)" if within else ""))
    return "\n".join(lines)


def compare(model, train, test, objectives=("elbo", "iwae:k=5"), *, epochs: int = 10, batch_size: int = 100,
            lr: float = 1e-3, seed: int = 0, device=None, eval_k: int = 5000, run_dir=None,
            progress: bool = True, data_plate: str | None = None, ais: dict | None = None,
            overwrite: bool = False) -> dict:
    """Train ``model`` under each objective with identical seeds, data and budget; evaluate each.

    Args:
        model: a config dict for [`pvae.VAE`][pvae.VAE] (e.g. ``{"latent_dim": 50}``), a function
            returning a fresh model (called after seeding, so every run starts from the same weights),
            or a model instance (each objective trains a copy of it as it is now; the instance itself
            is left untouched).
        objectives: names or specs (see [`pvae.objective`][pvae.objective]); every one is checked against the
            model before any is trained.
        data_plate: the plate over datapoints of a program of your own (None: found by tracing).
        ais: also estimate test log p(x) by annealed importance sampling, e.g.
            ``{"steps": 500, "chains": 16}`` (see [`pvae.log_likelihood`][pvae.log_likelihood]), reported next to IS.
        overwrite: replace a comparison already in ``run_dir`` (else that is an error, before
            any training).

    Each objective runs in a fresh scope of Pyro's param store, so ``pyro.param`` parameters of
    a program of your own start from their initial values every time, like the module's.
    Returns ``{"rows": [...], "runs": {spec: {"history": History, "eval": dict, "model": module}}}``
    and writes ``compare.md``, ``compare.csv``, ``compare.json`` and figures into ``run_dir`` (None:
    a new ``runs/compare-DATE-TIME``).
    """
    from pvae.models import VAE

    specs = [objectives] if isinstance(objectives, str) else list(objectives)
    if not specs:
        raise ValueError("compare needs at least one objective, e.g. objectives=('elbo', 'iwae:k=5')")
    for spec in specs:  # fail before any training on a bad spec
        make_objective(spec)
    if len({_slug(s) for s in specs}) < len(specs):
        raise ValueError(f"objectives {specs} name the same objective twice: each gets one run")
    check_positive_int("eval_k", eval_k)
    if ais is not None:
        _check_ais_options(ais)
    build = _builder(model, VAE)
    check_all(build, train, specs, seed=seed, batch_size=batch_size, data_plate=data_plate, ais=ais)
    run_dir = prepare(run_dir if run_dir is not None else fresh("compare"), overwrite=overwrite, kind="compare")
    with RunLock(run_dir):
        return _compare(build, train, test, specs, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                        device=device, eval_k=eval_k, run_dir=run_dir, progress=progress, data_plate=data_plate,
                        ais=ais)


def _builder(model, VAE):
    """A function returning a fresh model: the user's function, a VAE from a config dict, or a
    copy of a model instance as it is now (so every objective starts from the same weights)."""
    if isinstance(model, torch.nn.Module):
        template = copy.deepcopy(model)
        return lambda: copy.deepcopy(template)
    if isinstance(model, dict):
        return lambda: VAE(**model)
    if callable(model):
        return model
    raise TypeError(f"compare's model must be a model, a function returning a fresh one, or a VAE config dict; "
                    f"got {type(model).__name__}")


AIS_OPTIONS = ("steps", "chains", "leapfrog", "start", "batch_size")


def _check_ais_options(ais) -> None:
    if not isinstance(ais, dict):
        raise TypeError(f"ais must be a dict of AIS options such as {{'steps': 1800}}, got {type(ais).__name__}")
    unknown = sorted(set(ais) - set(AIS_OPTIONS))
    if unknown:
        raise ValueError(f"unknown AIS option {unknown[0]!r}; choose from {list(AIS_OPTIONS)}")
    if ais.get("start", "guide") not in ("guide", "prior"):  # as AIS says it, but before any training
        raise ValueError(f"start must be 'guide' or 'prior', got {ais['start']!r}")
    if "steps" in ais:
        check_positive_int("ais steps", ais["steps"], minimum=2)
    for key in ("chains", "leapfrog", "batch_size"):
        if key in ais:
            check_positive_int(f"ais {key}", ais[key])


def _compare(build, train, test, specs, *, epochs, batch_size, lr, seed, device, eval_k, run_dir, progress,
             data_plate, ais) -> dict:
    from pvae.analysis.report import _SafePlots

    plots = _SafePlots()
    rows, runs = [], {}
    for spec in specs:
        torch.manual_seed(seed)
        with pyro.get_param_store().scope():
            m = build()
            t0 = time.perf_counter()
            h = fit(m, train, objective=spec, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, device=device,
                    test=test, run_dir=run_dir / _slug(spec), progress=progress, data_plate=data_plate,
                    overwrite=True)
            train_seconds = sum(r["seconds"] for r in h) if h else time.perf_counter() - t0
            torch.manual_seed(seed)
            res = evaluate(h.model, test, k=eval_k, progress=progress, data_plate=data_plate)
        s = res["summary"]
        row = {"objective": spec, "k": make_objective(spec).num_particles, "train_seconds": train_seconds,
               **{key: s.get(key, float("nan")) for key, _ in COLUMNS[3:]}}
        if ais is not None:
            from pvae.infer.importance import log_likelihood, standard_error

            torch.manual_seed(seed)
            ll, mc_se = log_likelihood(h.model, test, method="ais", progress=progress, data_plate=data_plate,
                                       with_se=True, **ais)
            res["log_px_ais"], res["log_px_ais_mc_se"] = ll, mc_se
            row.update(log_px_ais=float(ll.mean()), log_px_ais_se=standard_error(ll),
                       log_px_ais_mc_se=float(mc_se.double().pow(2).sum().sqrt() / ll.numel()))
        rows.append(row)
        runs[spec] = {"history": h, "eval": res, "model": h.model}
        kept = {k: v for k, v in res.items() if k != "summary"}
        atomic_write(run_dir / _slug(spec) / "eval.pt", lambda tmp, kept=kept: torch.save(kept, tmp))
        if progress:
            print(f"{spec}: test log p(x) {row['log_px']:.2f}, ELBO {row['elbo']:.2f}, "
                  f"{row['active_units']} active units, {train_seconds:.0f} s")
    table = markdown_table(rows)
    table += "\n\n" + differences(runs)
    notes = list(dict.fromkeys(n for r in runs.values() for n in r["eval"]["summary"].get("notes", [])))
    noted = "".join(f"Note: {n}.\n" for n in notes)
    write_text(run_dir / "compare.md", f"# Objectives compared\n\n{len(rows)} objectives, {epochs} epochs each, "
               f"batch {batch_size}, lr {lr}, seed {seed}; test log p(x) with k = {eval_k}.\n\n{table}\n\n{noted}\n"
               "![learning curves](learning_curves.png)\n![log p(x)](log_px.png)\n![k-hat](khat.png)\n")
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=[key for key, _ in COLUMNS] + [k for k, _ in AIS_COLUMNS if ais is not None])
    w.writeheader()
    w.writerows(rows)
    write_text(run_dir / "compare.csv", buf.getvalue())
    write_text(run_dir / "compare.json", dumps(rows))
    plots.learning_curves({s: r["history"] for s, r in runs.items()}, path=run_dir / "learning_curves.png")
    plots.per_objective({s: r["eval"]["log_px"] for s, r in runs.items()}, "test log p(x) per datapoint",
                        path=run_dir / "log_px.png", paired=len(runs) > 1)
    if all("khat" in r["eval"] for r in runs.values()):
        plots.per_objective({s: r["eval"]["khat"] for s, r in runs.items()}, "PSIS k-hat per datapoint",
                            path=run_dir / "khat.png", hline=0.7)
    return {"rows": rows, "runs": runs, "table": table, "notes": notes}
