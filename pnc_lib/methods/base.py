"""What a method supplies to the engine (:class:`Method`), and :class:`NetworkMethod`, the
common part of every method that trains a network on images.

The engine calls, for each task t: ``begin_task(t)`` (structure only: grow heads, add
modules), ``train_task(ctx)``, ``end_task(t)``, then ``predict`` on the test data of all seen
classes, and ``features`` for the exemplar memory. ``state_dict``/``load_state_dict`` hold
everything learned, including a task in progress (optimiser and shuffling state), so a run
can resume from a checkpoint.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch
from torch import nn

from .. import distributed
from ..config import Config
from ..data.loader import batches
from ..scenario import Scenario


@dataclass
class TaskContext:
    """What the engine hands to ``train_task``."""

    task: int
    indices: np.ndarray              # training indices (current task, plus memory or all seen data)
    new_classes: range
    seen_classes: int
    progress: bool = True
    start_epoch: int = 0             # > 0 when resuming inside a task
    epoch_end: Callable[[int], None] = field(default=lambda epoch: None)


class Method:
    """Base class. ``data_policy``: "current" (the new task's data only), "memory" (plus the
    exemplar memory) or "all_seen" (every seen class's data: the joint upper bound)."""

    name = "method"
    data_policy = "current"

    def __init__(self, cfg: Config, scenario: Scenario, device: torch.device):
        self.cfg, self.scenario, self.device = cfg, scenario, torch.device(device)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.seen = 0
        self.task = -1

    def begin_task(self, task: int) -> None:
        self.task = task
        self.seen = self.scenario.seen_classes(task)

    def train_task(self, ctx: TaskContext) -> dict:
        raise NotImplementedError

    def end_task(self, task: int) -> dict:
        return {}

    def predict(self, split: str, indices: np.ndarray) -> torch.Tensor:
        """Predicted labels (n,) for samples ``indices`` of ``split``, over the seen classes."""
        raise NotImplementedError

    def features(self, split: str, indices: np.ndarray) -> torch.Tensor:
        """Feature vectors (n, d) used for herding, t-SNE and neural-collapse diagnostics."""
        raise NotImplementedError

    def dry_run(self) -> None:
        """Build what task 0 needs and push one tiny batch through it (config validation)."""

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "seen": self.seen, "task": self.task}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.seen, self.task = state["seen"], state["task"]


class NetworkMethod(Method):
    """A method whose model maps images to logits. Subclasses build ``self.model`` and define
    ``loss(x, y, epoch) -> (loss, stats)``, ``logits(x)`` and ``embed(x)``; this class supplies the
    epoch loop, batching, evaluation and checkpoint state."""

    #: under torchrun: True for a method whose loss leaves some trainable parameters without
    #: a gradient in a step (DDP then looks for them, at some cost per step)
    ddp_find_unused_parameters = False

    def __init__(self, cfg, scenario, device):
        super().__init__(cfg, scenario, device)
        self.model: nn.Module = nn.Module()
        self.trainer = None
        self._trainer_state = None

    # --- to be defined by subclasses
    def loss(self, x, y, epoch):
        raise NotImplementedError

    def logits(self, x):
        raise NotImplementedError

    def embed(self, x):
        raise NotImplementedError

    def trainable_parameters(self):
        return self.model.parameters()

    # --- shared machinery
    def _batches(self, split, indices, train: bool):
        # training batches under torchrun: this rank's share of every global batch of batch_size
        s, d = self.scenario, distributed.context()
        return batches(s.split(split), indices, self.cfg.batch_size if train else self.cfg.eval_batch_size,
                       shuffle=train, generator=self.generator, device=self.device,
                       augment=s.augment if (train and self.cfg.augment) else None,
                       mean=s.mean, std=s.std, num_workers=self.cfg.num_workers,
                       rank=d.rank if train else 0, world_size=d.world_size if train else 1)

    def make_trainer(self, task: int):
        from .training import EpochTrainer

        cfg = self.cfg
        wd = cfg.weight_decay if task == 0 else cfg.weight_decay_later
        return EpochTrainer(self.trainable_parameters(), task=task, epochs=cfg.epochs, lr=cfg.lr,
                            optimizer="sgd", momentum=cfg.momentum, weight_decay=wd,
                            milestones=cfg.lr_milestones, gamma=cfg.lr_gamma, grad_clip=cfg.grad_clip)

    def train_task(self, ctx: TaskContext) -> dict:
        from .training import mean_stats

        self.trainer = self.make_trainer(ctx.task)
        if ctx.start_epoch > 0 and self._trainer_state is not None:
            self.trainer.load_state_dict(self._trainer_state)
        self._trainer_state = None
        # under torchrun the loss runs inside DistributedDataParallel (gradients averaged over
        # the ranks); a single process calls self.loss directly
        loss_fn = distributed.wrap_loss(self.model, self.loss, self.ddp_find_unused_parameters)

        def epoch_fn(epoch):
            self.model.train()
            rows = []
            for x, y, _ in self._batches("train", ctx.indices, train=True):
                loss, stats = loss_fn(x, y, epoch)
                stats["loss"] = self.trainer.step(loss)
                rows.append(stats)
            return mean_stats(rows)

        history = self.trainer.run(epoch_fn, ctx, desc=f"task {ctx.task}")
        distributed.broadcast_module(self.model)   # one model on every rank (BatchNorm statistics)
        self.trainer = None
        return {"final_loss": history[-1].get("loss") if history else None, "epochs": len(history)}

    @torch.no_grad()
    def dry_run(self):
        self.begin_task(0)
        self.model.eval()
        x, _, _ = next(iter(self._batches("train", self.scenario.indices("train", task=0)[:2], False)))
        out = self.logits(x)
        if out.shape != (x.shape[0], self.seen) and out.shape[0] != x.shape[0]:
            raise ValueError(f"the model returns logits of shape {tuple(out.shape)} for a batch of {x.shape[0]}")

    @torch.no_grad()
    def predict(self, split, indices):
        self.model.eval()
        out = [self.logits(x)[:, :self.seen].argmax(1).cpu() for x, _, _ in self._batches(split, indices, False)]
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)

    @torch.no_grad()
    def features(self, split, indices):
        self.model.eval()
        out = [self.embed(x).float().cpu() for x, _, _ in self._batches(split, indices, False)]
        return torch.cat(out)

    def base_network(self) -> torch.nn.Module:
        """The early layers shared by every later part (SCL-PNC: the base frozen after task 0)."""
        raise NotImplementedError

    @torch.no_grad()
    def base_features(self, split, indices) -> torch.Tensor:
        """The base's feature map, averaged over space: (n, C), model in eval mode (linear probes)."""
        self.model.eval()
        base = self.base_network()
        out = [base(x).float().mean(dim=(2, 3)).cpu() for x, _, _ in self._batches(split, indices, False)]
        return torch.cat(out)

    def state_dict(self):
        state = super().state_dict()
        state["model"] = self.model.state_dict()
        state["trainer"] = self.trainer.state_dict() if self.trainer is not None else None
        return state

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.model.load_state_dict(state["model"])
        self._trainer_state = state.get("trainer")
