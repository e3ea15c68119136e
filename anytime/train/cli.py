"""``anytime train``: train or resume a run from a JSON config."""

from __future__ import annotations

import json
import os


def add_parsers(subparsers) -> None:
    p = subparsers.add_parser("train", help="train a model from a JSON config (resumable, torchrun-aware)",
                              description="Train from a config {\"model\": {...}, \"train\": {...}}. "
                                          "Launch with torchrun for data-parallel training.")
    p.add_argument("--config", help="training config JSON (optional with --resume: the run's own config is used)")
    p.add_argument("--resume", action="store_true", help="continue exactly from OUT/last.pt")
    p.add_argument("--out", help="run directory (default: train.out_dir, else runs/<name>)")
    p.add_argument("--data", help="dataset root (default: train.data_dir, else the default synthetic benchmark)")
    p.add_argument("--max-iters", type=int, help="override train.max_iters")
    p.add_argument("--pyramid", metavar="ARCH",
                   help="override model.pyramid: a built-in architecture or a JSON file such as a search's best.json "
                        "(the config's recipe with only the pyramid swapped)")
    p.add_argument("--pyramids", type=int, metavar="N",
                   help="override model.repeats: the recipe with N stacked pyramid networks (N exits), its exit "
                        "weights carried to N exits with the same mean (one model per depth, the paper's Figure 8a)")
    p.add_argument("--seed", type=int, help="override train.seed (a second seed measures re-training noise)")
    p.add_argument("--threads", type=int, metavar="N",
                   help="torch threads for this process (default: torch's, one per core); two trainings side by side "
                        "on a 2-core machine take --threads 1 each")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--save-inference", metavar="PATH",
                   help="also write the final model as a small inference checkpoint (config + fp16 weights) here")
    p.set_defaults(func=run)


def run(args) -> int:
    from anytime.cli import UserError
    from anytime.config import with_pyramid
    from anytime.train.checkpoint import CheckpointError, read_checkpoint
    from anytime.train.config import RunConfig, load_run_config
    from anytime.train.loop import train

    if args.config:
        config = load_run_config(args.config)
    elif args.resume and args.out:
        try:
            config = RunConfig.from_dict(read_checkpoint(f"{args.out}/last.pt")["run_config"])
        except CheckpointError as e:
            raise UserError(str(e)) from None
    else:
        raise UserError("--config is required (or --resume with --out to continue a run with its own config)")
    t = config.train
    if args.out:
        t.out_dir = args.out
    if args.data:
        t.data_dir = args.data
    if args.max_iters is not None:
        t.max_iters = args.max_iters
    if args.pyramid is not None:
        if args.resume and args.pyramid != config.model.get("pyramid"):
            raise UserError(f"--pyramid {args.pyramid} differs from the run's own {config.model.get('pyramid')}: "
                            "a resumed run keeps its model")
        config.model = with_pyramid(config.model, args.pyramid)
        try:
            config.model_config()  # an unknown or malformed architecture is refused before anything runs
        except Exception as e:
            raise UserError(f"--pyramid {args.pyramid}: {e}") from None
    if args.pyramids is not None:
        from anytime.config import ConfigError, exit_weights_at_depth

        if args.resume and args.pyramids != config.model.get("repeats"):
            raise UserError(f"--pyramids {args.pyramids} differs from the run's own {config.model.get('repeats')}: "
                            "a resumed run keeps its model")
        if not args.resume:
            try:
                config.model["exit_weights"] = exit_weights_at_depth(config.model.get("exit_weights"), args.pyramids)
                config.model["repeats"] = args.pyramids
                config.model_config()
            except ConfigError as e:
                raise UserError(f"--pyramids {args.pyramids}: {e}") from None
    if args.seed is not None:
        if args.resume and args.seed != t.seed:
            raise UserError(f"--seed {args.seed} differs from the run's own seed {t.seed}: a resumed run keeps its seed")
        t.seed = args.seed
    if args.threads is not None:
        if args.threads < 1:
            raise UserError(f"--threads must be at least 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    t.validate()
    try:
        summary = train(config, resume=args.resume, progress=not args.no_progress)
    except CheckpointError as e:
        raise UserError(str(e)) from None
    finally:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
    if int(os.environ.get("RANK", 0)) == 0:
        if args.save_inference:
            from anytime.train.checkpoint import load_model, save_inference_checkpoint

            model, meta = load_model(summary["checkpoint"])
            save_inference_checkpoint(model, args.save_inference, meta)
            summary["inference_checkpoint"] = args.save_inference
        print(json.dumps({k: summary[k] for k in ("iteration", "skipped_steps", "checkpoint", "inference_checkpoint")
                          if k in summary}))
    return 0
