"""Class-incremental scenarios: a dataset, a class order, ``base`` classes in task 0 and
``increment`` classes in each later task ("B50 Inc10").

Labels are remapped to the class order (new label ``k`` = the ``k``-th class of the order),
so task ``t`` owns the contiguous label range ``[bounds[t], bounds[t+1])``. The original
labels and class names stay available (``class_order``, ``original_class_names``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from .data.datasets import DataSplit, RawDataset, load_dataset


class ScenarioError(ValueError):
    """A split that does not fit the dataset."""


@dataclass
class Scenario:
    dataset: str
    base: int
    increment: int
    seed: int
    class_order: list            # original label of new label k
    original_class_names: list   # names indexed by original label
    train: DataSplit             # labels remapped
    test: DataSplit
    mean: tuple
    std: tuple
    input_shape: tuple
    augment: dict
    info: dict

    # ----------------------------------------------------------------- structure
    @property
    def num_classes(self) -> int:
        return len(self.class_order)

    @property
    def num_tasks(self) -> int:
        return 1 + (self.num_classes - self.base) // self.increment

    @property
    def bounds(self) -> list:
        """Label boundaries: task t owns labels [bounds[t], bounds[t+1])."""
        return [0] + [self.base + t * self.increment for t in range(self.num_tasks)]

    @property
    def class_names(self) -> list:
        """Class names in the order of the new labels."""
        return [self.original_class_names[c] for c in self.class_order]

    def task_classes(self, task: int) -> range:
        b = self.bounds
        return range(b[task], b[task + 1])

    def seen_classes(self, task: int) -> int:
        """Number of classes seen after training task ``task``."""
        return self.bounds[task + 1]

    def indices(self, split: str = "train", task: Optional[int] = None, upto: Optional[int] = None) -> np.ndarray:
        """Sample indices of ``split`` whose label lies in task ``task``, or in tasks 0..``upto``."""
        y = self.split(split).y
        if task is not None:
            lo, hi = self.bounds[task], self.bounds[task + 1]
        elif upto is not None:
            lo, hi = 0, self.bounds[upto + 1]
        else:
            lo, hi = 0, self.num_classes
        return torch.nonzero((y >= lo) & (y < hi)).flatten().numpy()

    def split(self, name: str) -> DataSplit:
        if name not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', not {name!r}")
        return self.train if name == "train" else self.test

    def __repr__(self):
        return (f"Scenario({self.dataset} B{self.base} Inc{self.increment}: {self.num_classes} classes, "
                f"{self.num_tasks} tasks, {len(self.train)} train / {len(self.test)} test, seed {self.seed})")


def class_order_for(num_classes: int, seed: int, class_order: Optional[Sequence[int]] = None) -> list:
    """An explicit order (checked) or a seeded permutation of ``range(num_classes)``."""
    if class_order is not None:
        order = [int(c) for c in class_order]
        if sorted(order) != list(range(num_classes)):
            raise ScenarioError(f"class_order must be a permutation of 0..{num_classes - 1} "
                                f"(got {len(order)} entries); give every class exactly once")
        return order
    return np.random.RandomState(seed).permutation(num_classes).tolist()


def check_split(num_classes: int, base: int, increment: int) -> None:
    if base < 1 or increment < 1:
        raise ScenarioError(f"base and increment must be >= 1 (got base={base}, increment={increment})")
    if base > num_classes:
        raise ScenarioError(f"base={base} is more than the {num_classes} classes of the dataset; "
                            f"use base <= {num_classes}")
    if base < num_classes and (num_classes - base) % increment != 0:
        raise ScenarioError(
            f"base={base} + increment={increment} does not fit {num_classes} classes: the "
            f"{num_classes - base} classes after the base task must split into equal tasks; "
            f"choose an increment that divides {num_classes - base}")


def make_scenario(name: str, base: int, increment: int, seed: int = 0,
                  class_order: Optional[Sequence[int]] = None, root: Optional[str] = None,
                  raw: Optional[RawDataset] = None, **dataset_kwargs) -> Scenario:
    """Build a scenario. ``base == 0`` means "B0": the first task has ``increment`` classes.

    Extra keyword arguments go to the dataset loader (e.g. ``num_classes=20`` for ``shapes``).
    """
    if base == 0:
        base = increment
    raw = raw if raw is not None else load_dataset(name, root=root, **dataset_kwargs)
    num_classes = len(raw.class_names)
    check_split(num_classes, base, increment)
    order = class_order_for(num_classes, seed, class_order)
    remap = torch.empty(num_classes, dtype=torch.long)
    remap[torch.tensor(order)] = torch.arange(num_classes)
    return Scenario(dataset=name, base=base, increment=increment, seed=seed, class_order=order,
                    original_class_names=list(raw.class_names),
                    train=raw.train.with_labels(remap[raw.train.y]),
                    test=raw.test.with_labels(remap[raw.test.y]),
                    mean=tuple(raw.mean), std=tuple(raw.std), input_shape=tuple(raw.input_shape),
                    augment=dict(raw.augment), info=dict(raw.info))
