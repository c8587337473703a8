"""``pvae bdmc RUN``: the AIS sandwich on data simulated from the run's model."""

from __future__ import annotations

import json

from pvae.cli.common import Members, _open_run, _run_data


def cmd_bdmc(args):
    import torch

    from pvae.infer.bdmc import bdmc
    from pvae.util.files import atomic_write, new_path, write_text

    run_dir, model = _open_run(args)
    test = _run_data(run_dir, args)
    data = None if hasattr(model, "x_shape") else test if isinstance(test, Members) else test.eval_x()[:args.n]
    record = new_path(run_dir / "bdmc.json")  # a second bdmc run keeps the first's results
    rows = []
    for steps in args.steps:
        r = bdmc(model, n=args.n, steps=steps, chains=args.chains, leapfrog=args.leapfrog, data=data, seed=args.seed,
                 progress=not args.quiet, data_plate=getattr(model, "_pvae_data_plate", None))
        rows.append(r["summary"])
        bounds = {k: r[k] for k in ("lower", "upper", "gap")}
        atomic_write(run_dir / f"{record.stem}_{steps}.pt", lambda tmp, bounds=bounds: torch.save(bounds, tmp))
    write_text(record, json.dumps(rows, indent=1))
    lines = ["| steps | chains | lower (forward AIS) | upper (reverse AIS) | gap | seconds |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['steps']} | {r['chains']} | {r['lower']:.3f} | {r['upper']:.3f} | {r['gap']:.3f} | {r['seconds']:.1f} |"
              for r in rows]
    print(f"BDMC on {args.n} datapoints simulated from the model (mean log p(x) bounds, nats):\n")
    print("\n".join(lines))
    print(f"wrote {record}")
