"""On-disk cache of frozen CLIP image features.

The image encoder is frozen, so the features of a split are computed once and reused by
every epoch, task and run. A cache file lives in ``cache_dir()/features/<key>.pt``; ``key``
is the sha256 of a canonical JSON of everything the features depend on:

    model identity (name + weights tag or checkpoint sha256), the caller's ``key_parts``
    (dataset name, dataset kwargs, split...), the preprocessing description, the number of
    images and a content fingerprint (sha256 of the image tensor bytes; for folder data the
    list of file paths).

A file is written atomically (temporary file + ``os.replace``) with a checksum of the
feature bytes and its shape. A file that cannot be read, has the wrong shape or N, another
key, or a checksum that does not match, is reported with a warning and rebuilt, never used.

``STATS`` counts images encoded, cache hits and builds (tests use it); ``encoder`` can be
injected to replace :func:`~pnc_lib.clip.model.encode_images`.
"""
from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from ..checkpoint import atomic_replace
from ..paths import cache_dir as _cache_root

#: counters over the life of the process: images encoded, cache hits, cache builds, rebuilds
STATS = {"images_encoded": 0, "hits": 0, "builds": 0, "rebuilds": 0}
FORMAT = 1


class CacheCorrupt(RuntimeError):
    """A cache file that must not be used."""


def features_dir(cache_dir: Optional[str] = None) -> Path:
    path = _cache_root(cache_dir) / "features"
    path.mkdir(parents=True, exist_ok=True)
    return path


def tensor_checksum(t: torch.Tensor) -> str:
    """sha256 of a tensor's bytes (C order)."""
    arr = np.ascontiguousarray(t.detach().cpu().numpy())
    return hashlib.sha256(memoryview(arr).cast("B")).hexdigest()


def content_fingerprint(split_data) -> str:
    """sha256 of the images: tensor bytes for in-memory data, file paths for folder data."""
    if split_data.x is not None:
        return "tensor:" + str(tuple(split_data.x.shape)) + ":" + tensor_checksum(split_data.x)
    ds = split_data.dataset
    samples = getattr(ds, "samples", None)
    if samples is None:
        raise ValueError("folder data needs a dataset with a `samples` list of (path, label) to be cached")
    h = hashlib.sha256()
    for path, _ in samples:
        h.update(str(path).encode() + b"\n")
    return f"files:{len(samples)}:" + h.hexdigest()


def transform_description(bundle, split_data) -> str:
    H, W = bundle.image_size
    if split_data.x is not None:
        return (f"tensor[0,1]|resize-short-side {H}x{W} bicubic antialias|center-crop|clamp|gray->rgb|"
                f"norm mean={list(bundle.mean)} std={list(bundle.std)}")
    return (f"pil|resize-short-side {H} bicubic|center-crop {H}x{W}|to-tensor|"
            f"norm mean={list(bundle.mean)} std={list(bundle.std)}")


def cache_key(bundle, split_data, key_parts: dict) -> tuple:
    """(sha256 hex key, the canonical record it was made from)."""
    record = {"format": FORMAT, "model": bundle.identity, "parts": key_parts,
              "transform": transform_description(bundle, split_data), "n": len(split_data),
              "content": content_fingerprint(split_data)}
    blob = json.dumps(record, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest(), record


def _image_batches(split_data, bundle, batch_size: int, num_workers: int = 0, lo: int = 0, hi: int = None):
    """(B, C, H, W) [0, 1] batches in dataset order (of the images ``lo:hi``, all by default)."""
    hi = len(split_data) if hi is None else hi
    if split_data.x is not None:
        for start in range(lo, hi, batch_size):
            yield split_data.x[start:min(start + batch_size, hi)]
        return
    from torchvision import transforms

    H, W = bundle.image_size
    tf = transforms.Compose([transforms.Resize(min(H, W), interpolation=transforms.InterpolationMode.BICUBIC),
                             transforms.CenterCrop((H, W)), transforms.ToTensor()])
    base = split_data.dataset
    loader_fn = getattr(base, "loader")

    class _Files(torch.utils.data.Dataset):
        def __len__(self):
            return hi - lo

        def __getitem__(self, i):
            return tf(loader_fn(base.samples[lo + i][0]).convert("RGB"))

    yield from torch.utils.data.DataLoader(_Files(), batch_size=batch_size, shuffle=False, num_workers=num_workers)


def _load(path: Path, key: str, n: int) -> torch.Tensor:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CacheCorrupt(f"unreadable ({type(exc).__name__}: {str(exc)[:200]})") from exc
    if not isinstance(payload, dict) or not isinstance(payload.get("features"), torch.Tensor):
        raise CacheCorrupt("no feature tensor in the file")
    feats = payload["features"]
    if payload.get("key") != key:
        raise CacheCorrupt("the file was written for another key")
    if feats.dim() != 2 or feats.shape[0] != n or list(feats.shape) != list(payload.get("shape", [])):
        raise CacheCorrupt(f"shape {tuple(feats.shape)} does not match the record {payload.get('shape')} "
                           f"and {n} images")
    if tensor_checksum(feats) != payload.get("checksum"):
        raise CacheCorrupt("checksum mismatch")
    return feats


def _save(path: Path, key: str, feats: torch.Tensor, record: dict) -> None:
    payload = {"features": feats.contiguous(), "key": key, "shape": list(feats.shape),
               "checksum": tensor_checksum(feats), "record": json.dumps(record, sort_keys=True, default=str)}
    atomic_replace(path, lambda f: torch.save(payload, f))


def cached_features(bundle, split_data, key_parts: dict, batch_size: int = 256, device=None,
                    progress: bool = True, cache_dir: Optional[str] = None,
                    encoder: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
                    num_workers: int = 0) -> torch.Tensor:
    """Features (N, d) float32 on the CPU of every image of ``split_data``, in dataset order.

    Loaded from the cache when a valid file exists, else computed with ``encoder(x) -> (B, d)``
    (default: :func:`pnc_lib.clip.model.encode_images` with ``bundle``) and stored.
    ``device`` is where the model runs (the bundle's device by default).

    Under torchrun (:mod:`pnc_lib.distributed`) every rank must call this: rank 0 checks the
    file; to build it, each rank encodes a slice of the images (cut at batch boundaries, so the
    batches are those of one process), rank 0 gathers the slices and writes the file once,
    and the other ranks read it.
    """
    from .. import distributed
    from .model import encode_images

    d = distributed.context()
    key, record = cache_key(bundle, split_data, key_parts)
    path = features_dir(cache_dir) / f"{key}.pt"
    n = len(split_data)
    feats = None
    if d.is_main and path.exists():
        try:
            feats = _load(path, key, n)
            STATS["hits"] += 1
        except CacheCorrupt as exc:
            STATS["rebuilds"] += 1
            warnings.warn(f"feature cache file {path} is corrupt or incomplete ({exc}); recomputing it",
                          RuntimeWarning, stacklevel=2)
    if distributed.broadcast_object(feats is not None):   # a valid file (rank 0 decides)
        if not d.is_main:
            feats = _load(path, key, n)
            STATS["hits"] += 1
        return feats
    encode = encoder or (lambda x: encode_images(bundle, x))
    lo, hi = distributed.shard_range(n, batch_size)   # (0, n) in a single process
    out = []
    desc = f"CLIP features {key_parts.get('dataset', '')}/{key_parts.get('split', '')}"
    with tqdm(total=hi - lo, desc=desc, disable=not progress or not d.is_main, leave=False) as bar:
        for x in _image_batches(split_data, bundle, batch_size, num_workers, lo, hi):
            if device is not None:
                x = x.to(device)
            with torch.no_grad():
                f = encode(x)
            out.append(f.detach().float().cpu())
            STATS["images_encoded"] += int(x.shape[0])
            bar.update(int(x.shape[0]))
    feats = torch.cat(out) if out else torch.zeros(0, 0)
    if d.enabled:   # rank 0 assembles the slices in order and writes the file; the others read it
        parts = distributed.gather_object(feats)
        if d.is_main:
            feats = torch.cat([p for p in parts if p.shape[0] > 0]) if n else feats
    if d.is_main:
        if feats.shape[0] != n:
            raise RuntimeError(f"encoded {feats.shape[0]} images for a split of {n}")
        _save(path, key, feats, record)
        STATS["builds"] += 1
    distributed.barrier()
    if not d.is_main:
        feats = _load(path, key, n)
    return feats
