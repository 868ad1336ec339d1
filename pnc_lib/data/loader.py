"""Batching over a :class:`DataSplit`: tensor slices for in-memory data (no DataLoader, no
copies of the dataset), a torch ``DataLoader`` for folder data. Augmentation for tensor data
(random crop with padding, horizontal flip) runs on whole batches on the target device.
"""
from __future__ import annotations

from typing import Iterator, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .datasets import DataSplit


def random_crop_flip(x: torch.Tensor, pad: int, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """Per-sample random crop of a zero-padded batch (B, C, H, W) and, if ``flip``, a random
    horizontal flip with probability 1/2. Draws from ``generator`` (CPU) so runs repeat."""
    b, _, h, w = x.shape
    if pad > 0:
        xp = F.pad(x, (pad, pad, pad, pad))
        dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator).to(x.device)
        dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator).to(x.device)
        rows = (dy[:, None] + torch.arange(h, device=x.device)[None])            # (B, H)
        cols = (dx[:, None] + torch.arange(w, device=x.device)[None])            # (B, W)
        idx_r = rows[:, None, :, None].expand(b, x.shape[1], h, w + 2 * pad)
        xp = torch.gather(xp, 2, idx_r)
        idx_c = cols[:, None, None, :].expand(b, x.shape[1], h, w)
        x = torch.gather(xp, 3, idx_c)
    if flip:
        mask = (torch.rand(b, generator=generator) < 0.5).to(x.device)
        x = torch.where(mask[:, None, None, None], x.flip(-1), x)
    return x


def batches(split: DataSplit, indices: Sequence[int], batch_size: int, *, shuffle: bool = False,
            generator: Optional[torch.Generator] = None, device="cpu", augment: Optional[dict] = None,
            mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
            num_workers: int = 0, rank: int = 0, world_size: int = 1) -> Iterator[tuple]:
    """Yield ``(x, y, idx)`` batches of the samples ``indices`` (idx: the dataset indices of the batch).

    With ``world_size > 1`` (data-parallel training) each batch of ``batch_size`` is cut into
    ``world_size`` shares and this yields share ``rank`` of every batch (see
    :func:`pnc_lib.distributed.batch_share`): all ranks draw the same shuffle from ``generator``.

    x is moved to ``device``, augmented if ``augment`` is a dict like {"pad": 4, "flip": True}
    (tensor data only; folder data augments in its own transform), and normalised with
    ``mean``/``std`` when given.
    """
    indices = torch.as_tensor(np.asarray(indices, dtype=np.int64))
    if shuffle:
        if generator is None:
            raise ValueError("shuffle=True needs a torch.Generator so that runs repeat")
        indices = indices[torch.randperm(len(indices), generator=generator)]
    chunks = [indices[start:start + batch_size] for start in range(0, len(indices), batch_size)]
    if world_size > 1:
        from ..distributed import batch_share

        chunks = [batch_share(c, rank, world_size) for c in chunks]
    norm = None
    if mean is not None and std is not None:
        c = len(mean)
        norm = (torch.tensor(mean, device=device).view(1, c, 1, 1), torch.tensor(std, device=device).view(1, c, 1, 1))
    if split.x is not None:
        for idx in chunks:
            x = split.x[idx].to(device, non_blocking=True)
            y = split.y[idx].to(device, non_blocking=True)
            if augment and x.dim() == 4:
                x = random_crop_flip(x, augment.get("pad", 0), augment.get("flip", False), generator)
            if norm is not None and x.dim() == 4:
                x = (x - norm[0]) / norm[1]
            yield x, y, idx
        return
    # folder data: a DataLoader over the subset, in the (shuffled) order of `indices`
    if not chunks:
        return
    order = torch.cat(chunks)
    bounds = np.cumsum([0] + [len(c) for c in chunks]).tolist()
    batch_sampler = [list(range(a, b)) for a, b in zip(bounds[:-1], bounds[1:])]   # one list per chunk
    subset = torch.utils.data.Subset(split.dataset, order.tolist())
    loader = torch.utils.data.DataLoader(subset, batch_sampler=batch_sampler, num_workers=num_workers,
                                         pin_memory=torch.device(device).type == "cuda")
    for idx, (x, _) in zip(chunks, loader):
        x = x.to(device, non_blocking=True)
        if norm is not None:
            x = (x - norm[0]) / norm[1]
        yield x, split.y[idx].to(device), idx
