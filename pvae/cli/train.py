"""``pvae train``: one run folder per run (config, history, checkpoints, figures, results)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from pvae.analysis.report import report, results_table
from pvae.cli.common import (
    _num_classes,
    binarization,
    build_model,
    compile_option,
    default_objective,
    load_split,
    own_program,
    resume_settings,
    training_data,
)


def cmd_train(args):
    from pvae.training.runs import fresh, prepare
    from pvae.util.files import MANIFEST

    if args.resume is not None:
        if not str(args.resume).strip():
            raise ValueError("--resume must name a run folder or checkpoint, got an empty string")
        resume_settings(args)
    main_rank = int(os.environ.get("RANK", "0")) == 0  # under torchrun, rank 0 owns the run folder
    if args.run_dir is None and "TORCHELASTIC_RUN_ID" in os.environ:  # one name for every rank
        args.run_dir = str(Path("runs") / f"{args.kind}-{os.environ['TORCHELASTIC_RUN_ID']}")
    run_dir = args.run_dir if args.run_dir is not None else fresh(args.kind)
    created = not Path(run_dir).exists()
    if main_rank:
        run_dir = prepare(run_dir, overwrite=args.overwrite, resume=args.resume)
    try:
        _train_in(args, run_dir, main_rank)
    except (ValueError, TypeError, FileNotFoundError):
        # a bad input found before training leaves no folder behind (an interrupted run keeps its data.json)
        folder = Path(run_dir)
        if created and main_rank and folder.is_dir() and {p.name for p in folder.iterdir()} <= {"data.json", MANIFEST}:
            (folder / "data.json").unlink(missing_ok=True)
            (folder / MANIFEST).unlink(missing_ok=True)
            folder.rmdir()
        raise


def _train_in(args, run_dir, main_rank):
    import pyro
    import torch

    from pvae.training.callbacks import TensorBoard
    from pvae.training.fit import fit
    from pvae.training.runs import RunLock, prepare
    from pvae.util.files import dumps, write_text

    with RunLock(run_dir) if main_rank else contextlib.nullcontext():
        if main_rank:  # again under the lock: another process may have written a run since the first look
            prepare(run_dir, overwrite=args.overwrite, resume=args.resume)
            print(f"writing to {run_dir}", flush=True)
        train, test = load_split(args, "train"), load_split(args, "test")
        torch.manual_seed(args.seed)  # the same command builds the same initial weights
        pyro.set_rng_seed(args.seed)
        model = build_model(args, train.x.shape[1:], _num_classes(train))
        if args.resume and not own_program(args):
            from pvae.training.checkpoint import load

            model = load(args.resume)
        data = {k: getattr(args, k, None) for k in ("dataset", "data_dir", "n_train", "n_test", "exclude_class")}
        data.update(binarize=binarization(args), eval_k=args.eval_k)
        if own_program(args):  # what `pvae eval --model` is checked against (the program is never imported from here)
            from pvae.infer.pair import program_fingerprint

            data.update(program=args.model, program_sha256=program_fingerprint(args.model))
        if main_rank:  # before the first step: an interrupted run still knows what it trained on
            write_text(run_dir / "data.json", dumps(data))
        h = fit(model, training_data(args, train), objective=default_objective(args), k=args.k, alpha=args.alpha,
                epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed, device=args.device,
                test=test, warmup_epochs=args.warmup_epochs, run_dir=run_dir, resume=args.resume,
                progress=not args.quiet, precision=args.precision, clip_grad=args.clip_grad,
                optimizer=args.optimizer, optimizer_args=args.optimizer_args, scheduler=args.scheduler,
                scheduler_args=args.scheduler_args, validation=args.validation, early_stopping=args.early_stopping,
                compile=compile_option(args),
                data_plate=getattr(args, "data_plate", None), overwrite=True,
                callbacks=[TensorBoard(args.tensorboard)] if getattr(args, "tensorboard", None) else ())
        if args.model == "vqvae" and getattr(args, "code_prior_epochs", 0) and main_rank:
            from pvae.training.checkpoint import update_model
            from pvae.training.code_prior import fit_code_prior

            fitted = fit_code_prior(h.model, train, test, epochs=args.code_prior_epochs, seed=args.seed,
                                    progress=not args.quiet)
            update_model(run_dir / "checkpoint.pt", h.model)  # the prior is part of the model from now on
            h.model._pvae_code_prior = {k: fitted[k] for k in ("test_nll", "uniform_nll", "codes_used")}
        if own_program(args):
            data["data_plate"] = h.program.data_plate
        if not main_rank:
            return  # under torchrun: rank 0 evaluates and writes the run's files
        write_text(run_dir / "data.json", dumps(data))
        if args.eval_k > 0:
            if args.resume and (Path(run_dir) / "results.json").exists():
                print(f"the resumed run's report replaces results.json and summary.md in {run_dir}", flush=True)
            s = report(h.model, test, run_dir, args.eval_k, history=h, progress=not args.quiet, seed=args.seed)
            print(results_table(s))
        print(f"run folder: {run_dir}")
