"""``pvae compare``: one configuration, several objectives, the same seeds, data, budget and
evaluator."""

from __future__ import annotations

from pvae.cli.common import _num_classes, build_model, load_split, training_data


def cmd_compare(args):
    from pvae.training.compare import compare
    from pvae.training.runs import fresh

    run_dir = args.run_dir if args.run_dir is not None else fresh("compare")
    train, test = load_split(args, "train"), load_split(args, "test")
    def model():  # called after compare() seeds: every objective starts from the same weights
        return build_model(args, train.x.shape[1:], _num_classes(train))

    out = compare(model, training_data(args, train), test, args.objectives, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                  seed=args.seed, device=args.device, eval_k=args.eval_k, run_dir=run_dir,
                  progress=not args.quiet, data_plate=args.data_plate, overwrite=args.overwrite,
                  ais=dict(steps=args.ais_steps, chains=args.ais_chains, leapfrog=args.ais_leapfrog)
                  if args.ais_steps else None)
    print(out["table"])
    print(f"run folder: {run_dir}")
