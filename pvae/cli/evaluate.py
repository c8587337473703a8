"""``pvae eval RUN``: log p(x) (IS or AIS), ELBO terms, k-hat and active units of a trained run,
written to a new folder inside the run."""

from __future__ import annotations

from pathlib import Path

from pvae.analysis.report import report, results_table
from pvae.cli.common import _open_run, _run_data


def cmd_eval(args):
    from pvae.training.runs import RunLock, prepare
    from pvae.util.files import MANIFEST, read_json

    run_dir, model = _open_run(args)
    test = _run_data(run_dir, args)
    hist = read_json(run_dir / "history.json") if (run_dir / "history.json").exists() else None
    ais = dict(steps=args.steps, chains=args.chains, leapfrog=args.leapfrog) if args.method == "ais" else None
    name = f"eval-{args.method}-k{args.k}" + (f"-steps{args.steps}" if ais else "") + f"-seed{args.seed}"
    target = Path(args.out) if args.out else run_dir / name
    created = not target.exists()
    out = prepare(target, overwrite=args.overwrite, kind="eval")  # never the training results
    try:
        with RunLock(out):
            s = report(model, test, out, args.k, history=hist, progress=not args.quiet, seed=args.seed, ais=ais)
    except (ValueError, TypeError):  # refused before any result: no empty folder is left behind
        if created and {p.name for p in out.iterdir()} <= {MANIFEST}:
            (out / MANIFEST).unlink(missing_ok=True)
            out.rmdir()
        raise
    print(results_table(s))
    print(f"wrote {out}")
