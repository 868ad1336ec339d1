"""Several processes, one per GPU (or CPU worker), with PyTorch's own distributed engine:
``torch.distributed`` for the collectives and ``DistributedDataParallel`` (DDP) for training.

    torchrun --nproc_per_node=4 -m pnc_lib run CONFIG.yaml

``torchrun`` starts the processes ("ranks") and sets ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``
and the rendezvous address; :func:`init` then joins the process group, with backend ``nccl``
when the run's device is a CUDA GPU (rank r uses GPU ``LOCAL_RANK``) and ``gloo`` on the CPU.
What each part of a run does with several ranks:

* **training** - every rank draws the same seeded shuffle (the method's generator) and takes
  its share of each global batch (:func:`batch_share`), so a rank trains on about
  ``batch_size // world_size`` samples per step and the *global* batch stays the config's
  ``batch_size``; the lr and the schedule are unchanged. The loss runs inside DDP
  (:func:`wrap_loss`), which averages the gradients over the ranks. BatchNorm statistics are
  per rank (each rank normalises its own share of the batch), so the numbers are close to,
  not bit-identical with, a single process.
* **evaluation** - each rank predicts its slice of the test samples; :func:`gather_in_order`
  reassembles the predictions, so every rank computes the accuracy matrix from all of them.
* **herding, checkpoints, result and config files** - rank 0 only; the exemplar memory is
  broadcast to the other ranks. On ``--resume`` every rank loads the checkpoint.
* **CLIP feature cache** - every rank encodes a slice of the images, rank 0 gathers them and
  writes the cache file once, the other ranks read it.
* **logs and progress bars** - rank 0 only.

Without torchrun (``WORLD_SIZE`` unset or 1) nothing here does anything: the helpers return
their input and a run gives the single-process numbers, bit for bit. Several nodes need the
run folder and the cache folder on a file system every node sees.
"""
from __future__ import annotations

import inspect
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch
import torch.distributed as dist
from torch import nn


@dataclass
class DistContext:
    """Where this process stands: ``rank`` of ``world_size`` (1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: Optional[str] = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))   # for collective tensors
    owns_group: bool = False         # True when init() created the process group (cleanup destroys it)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


_CTX = DistContext()


def context() -> DistContext:
    """The context of this process (one object, updated in place by :func:`init`)."""
    return _CTX


def enabled() -> bool:
    return _CTX.enabled


def is_main() -> bool:
    return _CTX.is_main


def launched() -> bool:
    """True when started by torchrun (or another launcher) with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def local_device(device) -> torch.device:
    """Under torchrun a bare ``cuda`` device means this rank's GPU, ``cuda:LOCAL_RANK``."""
    device = torch.device(device)
    if launched() and device.type == "cuda" and device.index is None:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def init(device="auto") -> DistContext:
    """Join the process group set up by torchrun (idempotent; a no-op for a single process).

    ``device`` is the run's device ("auto", "cpu", "cuda", "cuda:1" ...): ``nccl`` for a CUDA
    device, else ``gloo``. A group the caller created already is adopted as it is.
    """
    if _CTX.enabled or not dist.is_available():
        return _CTX
    if dist.is_initialized():
        backend, owns = dist.get_backend(), False
    elif launched():
        name = str(device)
        if name == "auto":
            name = "cuda" if torch.cuda.is_available() else "cpu"
        use_cuda = torch.device(name).type == "cuda" and torch.cuda.is_available()
        backend, owns = ("nccl" if use_cuda else "gloo"), True
        if use_cuda:
            torch.cuda.set_device(local_device(name))
        dist.init_process_group(backend=backend)   # env:// rendezvous from torchrun
    else:
        return _CTX
    _CTX.rank, _CTX.world_size = dist.get_rank(), dist.get_world_size()
    _CTX.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    _CTX.backend, _CTX.owns_group = backend, owns
    _CTX.device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
    return _CTX


def cleanup() -> None:
    """Leave the process group (``destroy_process_group`` if :func:`init` created it)."""
    if _CTX.owns_group and dist.is_initialized():
        dist.destroy_process_group()
    _CTX.rank, _CTX.world_size, _CTX.local_rank, _CTX.backend, _CTX.owns_group = 0, 1, 0, None, False
    _CTX.device = torch.device("cpu")


# ---------------------------------------------------------------------- collectives
def barrier() -> None:
    if _CTX.enabled:
        dist.barrier()


_ordering = [False]   # inside main_first (nested blocks run in the order of the outer one)


@contextmanager
def main_first():
    """Rank 0 runs the block first (downloads, pretraining, files), then the other ranks."""
    if not _CTX.enabled or _ordering[0]:
        yield
        return
    _ordering[0] = True
    try:
        if not _CTX.is_main:
            dist.barrier()
        try:
            yield
        finally:
            if _CTX.is_main:
                dist.barrier()   # also when the block failed, so the other ranks do not wait forever
    finally:
        _ordering[0] = False


def broadcast_object(obj, src: int = 0):
    """``obj`` of rank ``src``, on every rank (picklable objects)."""
    if not _CTX.enabled:
        return obj
    box = [obj if _CTX.rank == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank."""
    if not _CTX.enabled:
        return [obj]
    out = [None] * _CTX.world_size
    dist.all_gather_object(out, obj)
    return out


def gather_object(obj, dst: int = 0) -> Optional[list]:
    """``[obj of rank 0, ...]`` on rank ``dst``, None on the others."""
    if not _CTX.enabled:
        return [obj]
    out = [None] * _CTX.world_size if _CTX.rank == dst else None
    dist.gather_object(obj, out, dst=dst)
    return out


def mean_value(t: torch.Tensor) -> float:
    """Mean over the ranks of a scalar tensor (the loss), as a float, the same on every rank."""
    if not _CTX.enabled:
        return float(t.detach())
    v = t.detach().float().reshape(1).clone()
    if _CTX.backend == "nccl":
        v = v.to(_CTX.device)
    dist.all_reduce(v)
    return float(v) / _CTX.world_size


def mean_stats(stats: dict) -> dict:
    """Average a dict of per-epoch statistics over the ranks (float values; others from rank 0)."""
    if not _CTX.enabled:
        return stats
    rows = all_gather_object(stats)
    out = dict(rows[0])
    for k, v in rows[0].items():
        vals = [r.get(k) for r in rows]
        if all(isinstance(x, float) for x in vals):
            out[k] = float(sum(vals) / len(vals))
    return out


@torch.no_grad()
def broadcast_module(module: nn.Module, src: int = 0) -> None:
    """Copy the parameters and buffers of rank ``src`` into ``module`` on every rank (after
    training: BatchNorm running statistics are per rank, evaluation needs one model)."""
    if not _CTX.enabled:
        return
    for t in list(module.parameters()) + list(module.buffers()):
        if t.is_contiguous():
            dist.broadcast(t.data, src=src)
        else:
            tmp = t.data.contiguous()
            dist.broadcast(tmp, src=src)
            t.data.copy_(tmp)


# ---------------------------------------------------------------------- sharding
def batch_share(batch: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """This rank's part of one global batch: positions ``rank, rank + W, ...`` of the batch,
    padded by repetition to ``ceil(len / W)`` so every rank gets as many samples (as
    ``DistributedSampler`` pads). ``world_size == 1`` returns ``batch`` itself."""
    if world_size <= 1:
        return batch
    per = -(-len(batch) // world_size)
    if len(batch) != per * world_size:
        batch = batch[torch.arange(per * world_size) % len(batch)]
    return batch[rank::world_size]


def shard(indices) -> np.ndarray:
    """This rank's contiguous slice of ``indices`` (``np.array_split`` order)."""
    indices = np.asarray(indices)
    if not _CTX.enabled:
        return indices
    return np.array_split(indices, _CTX.world_size)[_CTX.rank]


def gather_in_order(fn: Callable[[np.ndarray], torch.Tensor], indices) -> torch.Tensor:
    """``fn(indices)`` computed in slices by the ranks and reassembled in order on every rank."""
    if not _CTX.enabled:
        return fn(indices)
    part = fn(shard(indices))
    return torch.cat([p.cpu() for p in all_gather_object(part.cpu())])


def shard_range(n: int, batch_size: int) -> tuple:
    """``(lo, hi)``: this rank's slice of ``range(n)``, cut at multiples of ``batch_size`` so
    the batches are those of a single process."""
    if not _CTX.enabled:
        return 0, n
    nb = -(-n // batch_size)
    parts = np.array_split(np.arange(nb), _CTX.world_size)[_CTX.rank]
    if len(parts) == 0:
        return n, n
    return int(parts[0]) * batch_size, min(int(parts[-1] + 1) * batch_size, n)


# ---------------------------------------------------------------------- DDP
class _LossModule(nn.Module):
    """What DDP wraps: holds the trained module (so DDP sees its parameters) and calls the
    method's loss, which may reach the parameters through the method's own attributes."""

    def __init__(self, module: nn.Module, fn: Callable):
        super().__init__()
        self.module = module
        self.fn = fn

    def forward(self, *args, **kwargs):
        return self.fn(*args, **kwargs)


def wrap_loss(module: nn.Module, fn: Callable, find_unused_parameters: bool = False) -> Callable:
    """``fn`` (a loss: ``fn(*batch) -> (loss, stats)``) run inside ``DistributedDataParallel``
    over ``module``, so ``loss.backward()`` averages the gradients of ``module``'s trainable
    parameters over the ranks. Build it once per task (the trainable set changes between
    tasks). A single process gets ``fn`` back unchanged."""
    if not _CTX.enabled:
        return fn
    from torch.nn.parallel import DistributedDataParallel as DDP

    device_ids = [_CTX.device.index] if _CTX.backend == "nccl" else None
    # buffers (BatchNorm statistics) stay per rank during training, not broadcast before every
    # forward; broadcast_module syncs them after training (newer torch names the switch
    # forward_sync_buffers)
    params = inspect.signature(DDP.__init__).parameters
    no_sync = {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {"broadcast_buffers": False}
    return DDP(_LossModule(module, fn), device_ids=device_ids, find_unused_parameters=find_unused_parameters,
               **no_sync)
