"""The training loop every network method shares: optimiser, step schedule, gradient
clipping, a finite-loss check, progress bars and per-epoch checkpoints (via the task context).
"""
from __future__ import annotations

import math
from typing import Callable, Iterable, Optional

import torch
from tqdm.auto import tqdm

from .. import distributed


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


class EpochTrainer:
    """Runs ``epochs`` epochs of ``epoch_fn`` with one optimiser and a step schedule.

    ``optimizer``: "sgd" (momentum, weight decay) or "adam". The lr is multiplied by ``gamma``
    at each epoch in ``milestones``. ``step(loss)`` does backward + clipping + update.

    Under torchrun (see :mod:`pnc_lib.distributed`) the loss value that is checked and
    reported, and the per-epoch statistics, are averaged over the ranks, so every rank sees
    the same numbers and stops together if the loss diverges.
    """

    def __init__(self, params: Iterable[torch.nn.Parameter], *, task: int, epochs: int, lr: float,
                 optimizer: str = "sgd", momentum: float = 0.9, weight_decay: float = 0.0,
                 milestones=(), gamma: float = 0.1, grad_clip: float = 0.0):
        self.params = [p for p in params if p.requires_grad]
        if not self.params:
            raise ValueError("nothing to train: every parameter is frozen")
        if optimizer == "sgd":
            self.optimizer = torch.optim.SGD(self.params, lr=lr, momentum=momentum, weight_decay=weight_decay)
        elif optimizer == "adam":
            self.optimizer = torch.optim.Adam(self.params, lr=lr, weight_decay=weight_decay)
        else:
            raise ValueError(f"unknown optimizer {optimizer!r}")
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(self.optimizer, list(milestones or []), gamma)
        self.task, self.epochs, self.grad_clip = task, epochs, grad_clip
        self.epoch = 0
        self.history: list = []

    def step(self, loss: torch.Tensor) -> float:
        value = distributed.mean_value(loss)   # float(loss) in a single process
        if not math.isfinite(value):
            raise TrainingDiverged(
                f"the loss became {value} at task {self.task}, epoch {self.epoch}; training stopped and the "
                f"last good checkpoint was kept. Try a lower lr, a smaller grad_clip, or check the data.")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.grad_clip and self.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        self.optimizer.step()
        return value

    def run(self, epoch_fn: Callable[[int], dict], ctx=None, desc: str = "epochs") -> list:
        """Call ``epoch_fn(epoch) -> stats`` for the remaining epochs; ``ctx.epoch_end(epoch)``
        after each one (the engine checkpoints there)."""
        start = ctx.start_epoch if ctx is not None else 0
        show = ctx.progress if ctx is not None else False
        bar = tqdm(range(start, self.epochs), desc=desc, leave=False, disable=not show)
        for epoch in bar:
            self.epoch = epoch
            stats = distributed.mean_stats(epoch_fn(epoch))
            self.scheduler.step()
            self.history.append(dict(stats, epoch=epoch))
            bar.set_postfix({k: f"{v:.3f}" for k, v in stats.items() if isinstance(v, float)})
            if ctx is not None:
                ctx.epoch_end(epoch)
        return self.history

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "epoch": self.epoch, "history": self.history}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch, self.history = state["epoch"], list(state["history"])


def mean_stats(rows: list) -> dict:
    """Average a list of per-batch dicts of floats (weighted equally)."""
    if not rows:
        return {}
    return {k: float(sum(r[k] for r in rows) / len(rows)) for k in rows[0]}
