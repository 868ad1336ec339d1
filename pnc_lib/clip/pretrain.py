"""Offline contrastive pretraining of the tiny CLIP (``pnc-tiny-clip``) on captioned shapes.

No pretrained weights can be downloaded here, so the CLIP chapters use a tiny CLIP that
was really pretrained, on a distribution that differs from the incremental split the
way web data differs from CIFAR:

* images come from the ``"pretrain"`` domain of :mod:`pnc_lib.data.shapes` (other
  backgrounds, shades and scales than the ``"cil"`` domain used for incremental learning);
* captions are built from the attributes with varied templates, and a fraction name only
  part of them ("a red triangle", "something striped");
* every shape, colour and texture is seen, but the 10 combinations in
  :data:`HELD_OUT` are never shown, so zero-shot on them is genuinely compositional.

Training uses open_clip's own model, tokenizer and ``ClipLoss`` with AdamW, linear
warmup and cosine decay and gradient clipping, on one CPU thread (deterministic, and
robust on a shared machine), with bf16 autocast, the math attention kernel (the fused
CPU kernel's backward is slow), 50% patch dropout and a compact token table (only the
caption vocabulary's rows are optimised) for speed. The ViT's positional embedding starts
from a 2-D sin-cos pattern (it learned texture faster in our runs). Shape is the slowest
attribute to learn for this ViT; colour and texture are learned first.
It is deterministic for a given seed (torch seed + per-step numpy generators).
Images are normalised with the model's own mean/std (:func:`normalize_images`).
:func:`ensure_tiny_clip_checkpoint` caches the result as a plain state_dict that loads
with ``open_clip.create_model("pnc-tiny-clip", pretrained=path)``.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..data import shapes
from ..paths import cache_dir as _cache_dir
from .tiny import TINY_CLIP, register_tiny_clip

# Bump when the data recipe or training loop changes: cached checkpoints then rebuild.
RECIPE_VERSION = 2

# Combinations never shown in pretraining (each shape and colour twice, textures 2-3x).
HELD_OUT = tuple(sorted(
    [(shapes.SHAPE_NAMES[s], shapes.COLOUR_NAMES[(s + 2) % 5], shapes.TEXTURE_NAMES[s % 4]) for s in range(5)]
    + [(shapes.SHAPE_NAMES[s], shapes.COLOUR_NAMES[(s + 4) % 5], shapes.TEXTURE_NAMES[(s + 2) % 4])
       for s in range(5)]))

# Full-caption templates added to those of the shapes generator.
_FULL_TEMPLATES = ("a photo of a {name}.", "a {name}.", "an image of a {name}.", "a good photo of a {name}.",
                   "a picture of a {size} {name}.")
_NOUNS = ("shape", "object", "thing")
# Every word a caption can contain (templates, fillers, attribute values).
_CAPTION_WORDS = " ".join(
    list(shapes.TEMPLATES) + list(_FULL_TEMPLATES) + list(_NOUNS) + list(shapes.SHAPE_NAMES)
    + list(shapes.COLOUR_NAMES) + list(shapes.TEXTURE_NAMES)
    + ["small large dark light grey something photo of a an shape ."])

_COMMON = dict(recipe_version=RECIPE_VERSION, domain="pretrain", image_size=32, partial_prob=0.3,
               weight_decay=0.1, betas=(0.9, 0.98), eps=1e-6, warmup_frac=0.1, min_lr_frac=0.02, grad_clip=1.0,
               sincos_pos=1.0, init_temperature=0.07, patch_dropout=0.5, bf16=True, num_threads=1,
               held_out=[list(c) for c in HELD_OUT])

SIZES = {
    "smoke": dict(_COMMON, steps=150, batch_size=64, lr=1e-3),
    "quick": dict(_COMMON, steps=2400, batch_size=64, lr=1e-3),
}


def pretraining_attributes() -> list[dict]:
    """The attribute dicts shown in pretraining: all 100 combinations minus :data:`HELD_OUT`."""
    held = set(HELD_OUT)
    return [a for a in shapes.class_attributes(shapes.NUM_COMBINATIONS, seed=0)
            if (a["shape"], a["colour"], a["texture"]) not in held]


def partial_caption(attrs: dict, rng: np.random.Generator) -> str:
    """A caption naming one or two of the three attributes, e.g. ``"a red triangle."``."""
    keep = [("shape", "colour", "texture")[i] for i in rng.permutation(3)[: int(rng.integers(1, 3))]]
    adjectives = " ".join(attrs[k] for k in ("colour", "texture") if k in keep)
    if "shape" in keep:
        noun = attrs["shape"]
        forms = [f"a {adjectives} {noun}.", f"a photo of a {adjectives} {noun}."] if adjectives else \
            [f"a {noun}.", f"a photo of a {noun}.", f"a {noun} shape."]
    else:
        noun = _NOUNS[int(rng.integers(len(_NOUNS)))]
        forms = [f"something {adjectives}.", f"a {adjectives} {noun}.", f"a photo of something {adjectives}."]
    return forms[int(rng.integers(len(forms)))]


def sample_batch(step: int, batch_size: int, seed: int = 0, settings: Optional[dict] = None):
    """Images (float32 (B, 3, H, W) in [0, 1]) and captions for one pretraining step.

    Deterministic in ``(seed, step)``. Combinations are drawn without replacement while
    the batch is no larger than the pool, so full captions of different images differ.
    """
    s = settings or SIZES["quick"]
    rng = np.random.default_rng([seed, step, 7919])
    pool = pretraining_attributes()
    idx = rng.permutation(len(pool))[:batch_size] if batch_size <= len(pool) else rng.integers(0, len(pool), batch_size)
    attrs = [pool[i] for i in idx]
    x, nuisance = shapes.render(attrs, rng, s["domain"], s["image_size"])
    caps = []
    for a, nz in zip(attrs, nuisance):
        if rng.random() < s["partial_prob"]:
            caps.append(partial_caption(a, rng))
        else:
            k = int(rng.integers(len(shapes.TEMPLATES) + len(_FULL_TEMPLATES)))
            caps.append(shapes.caption(a, dict(nz, template=k)) if k < len(shapes.TEMPLATES) else
                        _FULL_TEMPLATES[k - len(shapes.TEMPLATES)].format(name=shapes.class_name(a), size=nz["size"]))
    return torch.from_numpy(x), caps


def normalize_images(model, images: torch.Tensor) -> torch.Tensor:
    """Apply the model's preprocessing mean/std (open_clip defaults) to [0, 1] images."""
    mean = torch.tensor(getattr(model.visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN)
    std = torch.tensor(getattr(model.visual, "image_std", None) or open_clip.OPENAI_DATASET_STD)
    return (images - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)


class _TokenCache:
    """Tokenises each distinct caption once."""

    def __init__(self, tokenizer):
        self.tokenizer, self.cache = tokenizer, {}

    def __call__(self, captions: Sequence[str]) -> torch.Tensor:
        new = [c for c in dict.fromkeys(captions) if c not in self.cache]
        if new:
            self.cache.update(zip(new, self.tokenizer(new)))
        return torch.stack([self.cache[c] for c in captions])


class _CompactEmbedding(torch.nn.Module):
    """Training-time stand-in for the token embedding that holds only the caption vocabulary's rows.

    Equivalent to the full embedding on these captions, but the optimizer and gradients
    skip the ~49k unused rows (a quarter of the step time). :meth:`merge` writes the rows back.
    """

    def __init__(self, full: torch.nn.Embedding, ids: torch.Tensor):
        super().__init__()
        self.full, self.ids = [full], ids  # list: keep the full table out of parameters()
        remap = torch.full((full.num_embeddings,), -1, dtype=torch.long)
        remap[ids] = torch.arange(len(ids))
        self.register_buffer("remap", remap, persistent=False)
        self.weight = torch.nn.Parameter(full.weight.detach()[ids].clone())

    def forward(self, text):
        idx = self.remap[text]
        if bool((idx < 0).any()):
            raise ValueError("a caption token is outside the pretraining vocabulary")
        return F.embedding(idx, self.weight)

    @torch.no_grad()
    def merge(self) -> torch.nn.Embedding:
        full = self.full[0]
        full.weight[self.ids] = self.weight.detach()
        return full


def _vocabulary_ids(tokenizer) -> torch.Tensor:
    """Token ids of every caption word, plus start/end/padding tokens (BPE splits per word)."""
    words = sorted(set(re.sub(r"\{[a-z]+\}", " ", _CAPTION_WORDS).replace(".", " . ").split()))
    ids = tokenizer(words).flatten()  # one word per row: nothing is truncated
    return torch.unique(torch.cat([ids, torch.tensor([0, tokenizer.sot_token_id, tokenizer.eot_token_id])]))


def _param_groups(model, weight_decay):
    """open_clip's convention: no weight decay on 1-d params (gains, biases), norms, logit_scale."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        exclude = p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name
        (no_decay if exclude else decay).append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def _init_sincos_pos(visual, scale: float) -> None:
    """Initialise the ViT's patch positional embedding with a 2-D sin-cos pattern (class token kept)."""
    (gh, gw), dim = visual.grid_size, visual.positional_embedding.shape[1]
    q = dim // 4
    freq = 1.0 / (100.0 ** (torch.arange(q, dtype=torch.float64) / q))
    ys, xs = torch.meshgrid(torch.arange(gh, dtype=torch.float64), torch.arange(gw, dtype=torch.float64), indexing="ij")
    ay, ax = ys.reshape(-1, 1) * freq, xs.reshape(-1, 1) * freq
    pos = torch.cat([ay.sin(), ay.cos(), ax.sin(), ax.cos()], dim=1)
    visual.positional_embedding[1:, : 4 * q] = (scale * pos).to(visual.positional_embedding.dtype)


def _train(settings: dict, seed: int = 0, progress: bool = True, steps: Optional[int] = None):
    """Train a fresh ``pnc-tiny-clip``; returns ``(model, info)``. ``steps`` overrides the length."""
    from tqdm.auto import tqdm

    register_tiny_clip()
    s = dict(settings)
    if steps is not None:
        s["steps"] = int(steps)
    threads = torch.get_num_threads()
    torch.set_num_threads(s["num_threads"])
    try:
        torch.manual_seed(seed)
        model = open_clip.create_model(TINY_CLIP, force_patch_dropout=s["patch_dropout"] or None)
        with torch.no_grad():
            model.logit_scale.fill_(math.log(1 / s["init_temperature"]))
            if s["sincos_pos"]:
                _init_sincos_pos(model.visual, s["sincos_pos"])
        model.train()
        tokenizer = open_clip.get_tokenizer(TINY_CLIP)
        tokenize = _TokenCache(tokenizer)
        model.token_embedding = _CompactEmbedding(model.token_embedding, _vocabulary_ids(tokenizer))
        loss_fn = open_clip.loss.ClipLoss()
        opt = torch.optim.AdamW(_param_groups(model, s["weight_decay"]), lr=s["lr"], betas=tuple(s["betas"]),
                                eps=s["eps"])
        total, warmup = s["steps"], max(1, int(round(s["warmup_frac"] * s["steps"])))

        def lr_factor(i):
            if i < warmup:
                return (i + 1) / warmup
            t = (i - warmup) / max(1, total - warmup)
            return s["min_lr_frac"] + (1 - s["min_lr_frac"]) * 0.5 * (1 + math.cos(math.pi * t))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
        autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if s["bf16"] else contextlib.nullcontext
        losses, start, cpu0 = [], time.perf_counter(), time.process_time()
        bar = tqdm(range(total), desc="pretrain pnc-tiny-clip", disable=not progress, mininterval=1.0)
        for step in bar:
            x, caps = sample_batch(step, s["batch_size"], seed, s)
            ids = tokenize(caps)
            uniq, inverse = torch.unique(ids, dim=0, return_inverse=True)  # encode each caption once
            with sdpa_kernel(SDPBackend.MATH), autocast():  # CPU flash-attention backward is slow
                img = model.encode_image(normalize_images(model, x))
                txt = model.encode_text(uniq)
            img, txt = F.normalize(img.float(), dim=-1), F.normalize(txt.float(), dim=-1)[inverse]
            loss = loss_fn(img, txt, model.logit_scale.exp())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if s["grad_clip"]:
                torch.nn.utils.clip_grad_norm_(model.parameters(), s["grad_clip"])
            opt.step()
            sched.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            losses.append(loss.item())
            if progress and step % 20 == 0:
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}", T=f"{1 / model.logit_scale.exp().item():.3f}")
        bar.close()
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu0
        model.token_embedding = model.token_embedding.merge()
    finally:
        torch.set_num_threads(threads)
    model.visual.patch_dropout = torch.nn.Identity()  # same modules as create_model(TINY_CLIP)
    model.eval()
    tail = losses[-max(1, min(50, total // 10)):]
    info = dict(settings=s, seed=seed, steps=total, wall_time_s=round(wall, 2), cpu_time_s=round(cpu, 2),
                final_loss=float(np.mean(tail)), first_loss=losses[0] if losses else None,
                temperature=float(1 / model.logit_scale.detach().exp()), pnc_lib_version=_version())
    return model, info


def pretrain_tiny_clip(size: str = "quick", seed: int = 0, progress: bool = True):
    """Pretrain ``pnc-tiny-clip`` on captioned shapes; returns ``(model, info)`` (model in eval mode).

    ``size`` is ``"smoke"`` (seconds, for tests) or ``"quick"`` (a few minutes).
    """
    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    return _train(SIZES[size], seed=seed, progress=progress)


def state_dict_for_open_clip(model) -> dict:
    """A plain, contiguous CPU state_dict (loadable by ``open_clip.create_model(..., pretrained=path)``)."""
    return {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}


def checkpoint_paths(size: str = "quick", cache_dir: Optional[str] = None) -> tuple[Path, Path]:
    """``(<cache>/clip/pnc-tiny-clip-shapes-<size>.pt, ...json)``."""
    folder = _cache_dir(None if cache_dir is None else str(cache_dir)) / "clip"
    stem = f"{TINY_CLIP}-shapes-{size}"
    return folder / f"{stem}.pt", folder / f"{stem}.json"


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _expected(size: str, seed: int) -> dict:
    register_tiny_clip()
    return dict(model_name=TINY_CLIP, model_config=open_clip.get_model_config(TINY_CLIP), size=size, seed=seed,
                settings=json.loads(json.dumps(SIZES[size])))


def _is_valid(pt: Path, meta_path: Path, expected: dict) -> bool:
    if not (pt.is_file() and meta_path.is_file()):
        return False
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        return False
    if any(meta.get(k) != v for k, v in expected.items()):
        return False
    return meta.get("sha256") == sha256_file(pt)


@contextlib.contextmanager
def _file_lock(path: Path):
    """Exclusive advisory lock on ``path`` (POSIX); a no-op where ``fcntl`` is missing."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def ensure_tiny_clip_checkpoint(size: str = "quick", cache_dir: Optional[str] = None, progress: bool = True,
                                seed: int = 0) -> Path:
    """Path of the pretrained checkpoint for ``size``, training it first if needed.

    The ``.pt`` holds a plain state_dict; the ``.json`` beside it (written last, as the
    completion marker) holds the model config, settings, seed, versions, wall time,
    final loss and the ``.pt``'s sha256. A missing/corrupted file or a mismatching JSON
    triggers a deterministic rebuild; a file lock keeps concurrent processes apart.
    """
    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    pt, meta_path = checkpoint_paths(size, cache_dir)
    pt.parent.mkdir(parents=True, exist_ok=True)
    expected = _expected(size, seed)
    if _is_valid(pt, meta_path, expected):
        return pt
    with _file_lock(pt.with_name(pt.name + ".lock")):
        if _is_valid(pt, meta_path, expected):  # another process may have built it meanwhile
            return pt
        if meta_path.exists():
            meta_path.unlink()  # invalidate first: the JSON marks a complete checkpoint
        model, info = _train(SIZES[size], seed=seed, progress=progress)
        _atomic_write(pt, lambda tmp: torch.save(state_dict_for_open_clip(model), tmp))
        meta = dict(expected, sha256=sha256_file(pt), pnc_lib_version=_version(), torch_version=torch.__version__,
                    open_clip_version=open_clip.__version__, wall_time_s=info["wall_time_s"],
                    cpu_time_s=info["cpu_time_s"],
                    final_loss=info["final_loss"], temperature=info["temperature"],
                    held_out_classes=[f"{c} {t} {s}" for s, c, t in HELD_OUT],
                    created=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        _atomic_write(meta_path, lambda tmp: tmp.write_text(json.dumps(meta, indent=2)))
    return pt


@torch.no_grad()
def encode_texts(model, tokenizer, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
    """L2-normalised text features (N, D)."""
    was_training = model.training
    model.eval()
    try:
        out = [model.encode_text(tokenizer(list(texts[i:i + batch_size])), normalize=True)
               for i in range(0, len(texts), batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(out).float()


@torch.no_grad()
def encode_images(model, images: torch.Tensor, batch_size: int = 256, normalize: bool = True) -> torch.Tensor:
    """L2-normalised image features (N, D); ``images`` in [0, 1] unless ``normalize=False``."""
    was_training = model.training
    model.eval()
    try:
        out = []
        for i in range(0, len(images), batch_size):
            x = images[i:i + batch_size].float()
            out.append(model.encode_image(normalize_images(model, x) if normalize else x, normalize=True))
    finally:
        model.train(was_training)
    return torch.cat(out).float()


def zero_shot_accuracy(model, tokenizer, images: torch.Tensor, labels: torch.Tensor, class_names: Sequence[str],
                       template: str = "a photo of a {}.") -> float:
    """Zero-shot top-1 accuracy (percent) with one prompt per class; images in [0, 1]."""
    text = encode_texts(model, tokenizer, [template.format(c) for c in class_names])
    pred = (encode_images(model, images) @ text.T).argmax(dim=1)
    return float((pred == torch.as_tensor(labels)).float().mean() * 100)


def text_similarity(model, tokenizer, names: Sequence[str],
                    template: Optional[str] = "a photo of a {}.") -> torch.Tensor:
    """(K, K) cosine similarity of the prompts' text features (``template=None``: raw names)."""
    t = encode_texts(model, tokenizer, [template.format(n) if template else n for n in names])
    return t @ t.T


def _version() -> str:
    from .. import __version__
    return __version__
