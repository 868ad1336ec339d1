"""The one engine behind :func:`pnc_lib.run`: for every task it trains the method, evaluates
on the test data of all seen classes, fills the accuracy matrix, updates the exemplar memory,
and writes a checkpoint and the results JSON into the run's output folder.

Under torchrun the same loop runs in every process (see :mod:`pnc_lib.distributed`): training
is data-parallel, evaluation is split over the ranks and gathered, and rank 0 alone herds the
memory (then broadcast), writes the checkpoints, the config and the results, and shows progress.

A method supplies only what differs (see :mod:`pnc_lib.methods.base`).
"""
from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import yaml
from tqdm.auto import tqdm

from . import distributed, metrics
from .checkpoint import atomic_write_text, load_checkpoint, save_checkpoint
from .config import Config, make_config
from .memory import ExemplarMemory
from .methods import TaskContext, method_class
from .result import Result
from .scenario import Scenario, make_scenario

CHECKPOINT = "checkpoint.pt"
RESULT = "result.json"
CONFIG = "config.yaml"


def resolve_device(name: str) -> torch.device:
    """The device of a config's ``device``; under torchrun, ``cuda`` is this rank's GPU (LOCAL_RANK)."""
    if name == "auto":
        return distributed.local_device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device={name!r} was asked for but no CUDA GPU is available; use device: cpu")
    return distributed.local_device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def scenario_for(cfg: Config) -> Scenario:
    return make_scenario(cfg.dataset, cfg.base, cfg.increment, seed=cfg.seed, class_order=cfg.class_order,
                         root=cfg.root, **cfg.dataset_kwargs)


def training_indices(policy: str, scenario: Scenario, task: int, memory: Optional[ExemplarMemory]) -> np.ndarray:
    current = scenario.indices("train", task=task)
    if policy == "all_seen":
        return scenario.indices("train", upto=task)
    if policy == "memory" and memory is not None and task > 0:
        return np.concatenate([current, memory.indices])
    return current


class Run:
    """One run of a config. ``Run(cfg).execute()`` returns the :class:`Result`."""

    def __init__(self, config, scenario: Optional[Scenario] = None):
        self.cfg = config if isinstance(config, Config) else make_config(config)
        cfg = self.cfg
        self.out_dir = Path(cfg.out_dir or Path("runs") / f"{cfg.run_name}_{cfg.digest()}")
        self.device = resolve_device(cfg.device)
        self.dist = distributed.init(self.device)   # joins torchrun's process group; no-op otherwise
        seed_everything(cfg.seed)
        if scenario is None:
            with distributed.main_first():   # rank 0 downloads the data first
                scenario = scenario_for(cfg)
        self.scenario = scenario
        self.method = method_class(cfg.method)(cfg, self.scenario, self.device)
        uses_memory = self.method.data_policy == "memory" and (cfg.memory_budget or 0) > 0
        self.memory = ExemplarMemory(cfg.memory_budget) if uses_memory else None
        T = self.scenario.num_tasks
        self.R = np.full((T, T), np.nan)
        self.step_acc, self.old_acc, self.new_acc, self.timings, self.task_info = [], [], [], [], []
        self.next_task, self.start_epoch = 0, 0

    # ------------------------------------------------------------------ checkpoints
    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / CHECKPOINT

    def _payload(self, next_task: int, epoch: int) -> dict:
        return {"fingerprint": self.cfg.fingerprint(), "next_task": next_task, "epoch": epoch,
                "method": self.method.state_dict(),
                "memory": self.memory.state_dict() if self.memory else None,
                "R": self.R, "step_acc": self.step_acc, "old_acc": self.old_acc, "new_acc": self.new_acc,
                "timings": self.timings, "task_info": self.task_info,
                "torch_rng": torch.get_rng_state(), "numpy_rng": np.random.get_state()}

    def save(self, next_task: int, epoch: int = 0) -> None:
        if not self.dist.is_main:   # one checkpoint, written by rank 0 (every rank has the same state)
            return
        save_checkpoint(self.checkpoint_path, self._payload(next_task, epoch))

    def restore(self) -> bool:
        """Load the checkpoint of this out_dir if there is one. Returns True if it did."""
        if not self.checkpoint_path.exists():
            return False
        p = load_checkpoint(self.checkpoint_path, self.cfg.fingerprint())
        self.next_task, self.start_epoch = p["next_task"], p["epoch"]
        # replay the structural growth of every task begun, then load what was learned
        last_begun = self.next_task if self.start_epoch > 0 else self.next_task - 1
        for t in range(min(last_begun, self.scenario.num_tasks - 1) + 1):
            self.method.begin_task(t)
        self.method.load_state_dict(p["method"])
        if self.memory is not None and p["memory"] is not None:
            self.memory.load_state_dict(p["memory"])
        self.R = p["R"]
        self.step_acc, self.old_acc, self.new_acc = p["step_acc"], p["old_acc"], p["new_acc"]
        self.timings, self.task_info = p["timings"], p["task_info"]
        torch.set_rng_state(p["torch_rng"])
        np.random.set_state(p["numpy_rng"])
        return True

    # ------------------------------------------------------------------ the loop
    def _epoch_end(self, task: int):
        every = self.cfg.checkpoint_every

        def hook(epoch: int):
            if every and (epoch + 1) % every == 0 and epoch + 1 < self.cfg.epochs:
                self.save(task, epoch + 1)
        return hook

    def evaluate(self, task: int) -> None:
        s = self.scenario
        test_idx = s.indices("test", upto=task)
        # under torchrun each rank predicts a slice; all predictions, in order, on every rank
        preds = distributed.gather_in_order(lambda idx: self.method.predict("test", idx), test_idx).numpy()
        targets = s.test.y[test_idx].numpy()
        self.R[task, :task + 1] = metrics.task_accuracies(preds, targets, s.bounds[:task + 2])
        self.step_acc.append(metrics.accuracy(preds, targets))
        old, new = metrics.old_new_accuracy(preds, targets, s.bounds[task])
        self.old_acc.append(old)
        self.new_acc.append(new)

    def execute(self, stop_after: Optional[int] = None) -> Result:
        """Run the remaining tasks (only up to task ``stop_after - 1`` if given; calling
        ``execute`` again, or a later ``resume``, continues) and return the result so far.
        With ``cfg.threads`` set, torch uses that many CPU threads during the run."""
        threads = torch.get_num_threads()
        if self.cfg.threads and self.device.type == "cpu":
            torch.set_num_threads(self.cfg.threads)
        try:
            return self._execute(stop_after)
        finally:
            torch.set_num_threads(threads)

    def _execute(self, stop_after: Optional[int]) -> Result:
        cfg, s, main = self.cfg, self.scenario, self.dist.is_main
        if main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        resumed = (cfg.resume and self.restore()) or self.next_task > 0   # every rank loads the checkpoint
        if not resumed and self.checkpoint_path.exists() and self.next_task == 0:
            # a fresh run in a folder with an old checkpoint: check it is ours before replacing it
            load_checkpoint(self.checkpoint_path, cfg.fingerprint())
        if main:
            atomic_write_text(self.out_dir / CONFIG, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        progress = cfg.progress and main
        last = s.num_tasks if stop_after is None else min(stop_after, s.num_tasks)
        bar = tqdm(range(self.next_task, last), desc=f"{cfg.method} tasks", disable=not progress)
        for t in bar:
            start_epoch = self.start_epoch if t == self.next_task else 0
            if start_epoch == 0 or not resumed:
                self.method.begin_task(t)
            ctx = TaskContext(task=t, indices=training_indices(self.method.data_policy, s, t, self.memory),
                              new_classes=s.task_classes(t), seen_classes=s.seen_classes(t),
                              progress=progress, start_epoch=start_epoch, epoch_end=self._epoch_end(t))
            t0 = time.perf_counter()
            info = dict(self.method.train_task(ctx) or {})
            info.update(self.method.end_task(t) or {})
            t1 = time.perf_counter()
            self.evaluate(t)
            t2 = time.perf_counter()
            if self.memory is not None:
                if main:   # herding on rank 0, then the same memory on every rank
                    self.memory.update(s.train.y, s.task_classes(t), s.seen_classes(t),
                                       lambda idx: self.method.features("train", idx))
                if self.dist.enabled:
                    self.memory.load_state_dict(distributed.broadcast_object(self.memory.state_dict()))
                info["memory_size"] = int(len(self.memory.indices))
            t3 = time.perf_counter()
            self.timings.append({"train_s": t1 - t0, "eval_s": t2 - t1, "memory_s": t3 - t2})
            self.task_info.append(info)
            self.save(t + 1, 0)
            self.next_task, self.start_epoch = t + 1, 0
            bar.set_postfix(acc=f"{self.step_acc[-1]:.1f}")
        result = self.result()
        if len(self.step_acc) == s.num_tasks and main:
            result.to_json(self.out_dir / RESULT)
        distributed.barrier()   # every rank returns once rank 0's files are written
        return result

    def result(self) -> Result:
        info = {"scenario": repr(self.scenario), "class_order": self.scenario.class_order,
                "device": str(self.device), "out_dir": str(self.out_dir)}
        info.update(getattr(self.method, "run_info", lambda: {})())
        return Result(config=self.cfg.to_dict(), acc_matrix=self.R.copy(), step_accuracy=list(self.step_acc),
                      old_accuracy=list(self.old_acc), new_accuracy=list(self.new_acc),
                      timings=list(self.timings), task_info=list(self.task_info), info=info)


def run(config, scenario: Optional[Scenario] = None, **overrides) -> Result:
    """Run a config (dict, :class:`Config`, or YAML path) and return its :class:`Result`.

    Keyword arguments override config keys, e.g. ``run("configs/x.yaml", preset="smoke")``.
    """
    cfg = make_config(config, **overrides) if not isinstance(config, Config) or overrides else config
    return Run(cfg, scenario=scenario).execute()
