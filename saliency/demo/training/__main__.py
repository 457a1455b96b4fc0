"""Train a demo model from its seed, exactly as its shipped weights were made.

``python -m saliency.demo.training --model NAME [--out DIR] [options]``: plain models train with
:func:`saliency.demo.training.train`, the Right-for-the-Right-Reasons model with
:func:`saliency.demo.rrr.train_rrr` and the penalty of its :data:`DEMO_MODELS` entry.
``--out DIR`` writes ``DIR/<model>.pt`` and its ``DIR/manifest.json`` entry; ``--smoke`` runs a
few-second version of the same pipeline (used by the tests).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch

from saliency.demo.models import DEMO_MODELS
from saliency.demo.rrr import train_rrr
from saliency.demo.training import TrainConfig, save_weights, smoke_config, train


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m saliency.demo.training --model NAME [--out DIR] [options]``."""
    parser = argparse.ArgumentParser(
        prog="python -m saliency.demo.training", description=(__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument("--model", required=True, choices=sorted(DEMO_MODELS))
    parser.add_argument("--out", type=Path, default=None, help="write weights + manifest here")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--images", type=int, default=None, help="distinct training scenes")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--learning-rate", type=float, default=None)
    parser.add_argument("--eval-images", type=int, default=None)
    parser.add_argument("--noise", type=float, default=None, help="max σ of training noise")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--smoke", action="store_true", help="a few-second run of the pipeline")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    spec = DEMO_MODELS[args.model]
    config = replace(
        smoke_config(args.model, args.seed)
        if args.smoke
        else TrainConfig(args.model, args.seed, spec.train_images, spec.epochs),
        learning_rate=spec.learning_rate,
        weight_decay=spec.weight_decay,
    )
    overrides = {
        name: getattr(args, name)
        for name in ("images", "epochs", "batch_size", "learning_rate", "eval_images", "noise")
        if getattr(args, name) is not None
    }
    config = replace(config, **overrides)
    if spec.penalty > 0:
        result = train_rrr(
            config,
            spec.penalty,
            penalty_samples=spec.penalty_samples,
            form=spec.penalty_form,
            score=spec.penalty_score,
            log=lambda line: print(line, flush=True),
        )
    else:
        result = train(config, log=lambda line: print(line, flush=True))
    if args.out is not None:
        print(f"wrote {save_weights(result, args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
