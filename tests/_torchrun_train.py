"""Run by tests/test_ddp.py, in one process or under torchrun: train a network with minibatches
and a formula with full-batch Adam (float64), and write the final parameters (rank 0) as JSON.

    python _torchrun_train.py OUT.json KIND [--epochs E] [--checkpoint DIR] [--resume] [--die-at K]

KIND is "mlp" (81 rows, 20% validation: 65 training rows, global batch 32, so the last batch
of an epoch has one row and rank 1's share of it is empty), "formula" or "both".
With --die-at K rank 1 (rank 0 in one process) raises at the end of epoch K.
"""

import argparse
import json
import sys

import numpy as np

import gradfit as gf
from gradfit.callbacks import Callback
from gradfit.train.checkpoint import Checkpointer
from gradfit.train.distributed import process_group


class DieAt(Callback):
    def __init__(self, epoch: int, rank: int):
        self.epoch, self.rank = epoch, rank

    def after_epoch(self, loop) -> None:
        if loop.epoch == self.epoch and process_group()[0] == self.rank:
            raise RuntimeError(f"rank {self.rank} dies at epoch {self.epoch}")


def mlp(epochs: int, callbacks=(), **kw) -> list:
    rng = np.random.default_rng(3)
    x = rng.uniform(-2, 2, (81, 2))
    y = np.sin(x[:, 0]) + 0.5 * x[:, 1] ** 2 + rng.normal(0, 0.05, 81)
    r = gf.fit("mlp", x=x, y=y, hidden=(8,), epochs=epochs, batch_size=32, lr=0.01, dtype="float64",
               val_fraction=0.2, device="cpu", callbacks=callbacks, **kw)
    params = np.concatenate([p.detach().numpy().ravel() for p in r.model.module.parameters()])
    return [params.tolist(), r.history["train_loss"], r.history["val_loss"]]


def formula(epochs: int, callbacks=(), **kw) -> list:
    rng = np.random.default_rng(4)
    x = np.linspace(0, 4, 203)
    y = 2.5 * np.exp(-0.7 * x) + 0.3 + rng.normal(0, 0.02, x.size)
    r = gf.fit("a*exp(-k*x) + c", x=x, y=y, init={"a": 1.0, "k": 0.3, "c": 0.0}, optimizer="adam", lr=0.05,
               epochs=epochs, dtype="float64", val_fraction=0.25, device="cpu", callbacks=callbacks, **kw)
    return [[r.params[k] for k in ("a", "k", "c")], r.history["train_loss"], r.history["val_loss"]]


def main(argv) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("kind", choices=("mlp", "formula", "both"))
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--checkpoint")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--die-at", type=int)
    args = ap.parse_args(argv)
    rank, size = process_group()
    callbacks = [DieAt(args.die_at, min(1, size - 1))] if args.die_at else []
    doc = {"world": size}
    for kind, run in (("mlp", mlp), ("formula", formula)):
        if args.kind in (kind, "both"):
            kw = {}
            if args.checkpoint:  # a folder per fit: DIR/mlp, DIR/formula
                kw = {"checkpoint": Checkpointer(f"{args.checkpoint}/{kind}", every_epochs=1, every_seconds=None),
                      "resume": args.resume}
            doc[kind] = run(args.epochs, callbacks, **kw)
    if rank == 0:
        with open(args.out, "w") as f:
            json.dump(doc, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
