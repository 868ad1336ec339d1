"""Loading a frozen open_clip model and encoding images and class prompts with it.

:func:`load_clip` accepts any open_clip ``model_name`` with a ``pretrained`` tag
(``"openai"``, ``"laion2b_s34b_b88k"``...), a local checkpoint file, the tag ``"pnc-shapes"``
(a tiny CLIP pretrained on the ``shapes`` dataset by :mod:`pnc_lib.clip.pretrain`), or no
weights at all (random initialisation, labelled ``"random-init"``). The returned
:class:`ClipBundle` says which weights were used (``weights``, ``is_random``) and carries an
``identity`` string that the feature cache uses as part of its key.

Images are (B, C, H, W) tensors in [0, 1]; CLIP's own resize and normalisation are applied
here (the dataset's mean/std are *not* used).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

#: ``pretrained`` values that ask for random initialisation explicitly. (A config field left
#: at ``None`` is filled from the preset, so a config needs a non-None way to say "no weights".)
RANDOM_TAGS = ("random-init", "random", "none")
#: tag of the tiny CLIP pretrained on ``shapes`` (see :mod:`pnc_lib.clip.pretrain`)
SHAPES_TAG = "pnc-shapes"
RANDOM_SEED = 0  # random-init weights are drawn from this seed, so they repeat


class ClipWeightsUnavailable(RuntimeError):
    """The requested CLIP weights cannot be had here (no network, missing checkpoint file)."""


@dataclass
class ClipBundle:
    """A frozen CLIP model and what is needed to use it.

    ``image_size``: (H, W) input size; ``mean``/``std``: CLIP's normalisation;
    ``weights``: a label ("openai", "random-init", "checkpoint:<file>", "pnc-shapes:<size>");
    ``is_random``: True when the weights are a random initialisation;
    ``identity``: a string that changes whenever the model or its weights change (cache key).
    """

    model: torch.nn.Module
    tokenizer: object
    model_name: str
    image_size: tuple
    mean: tuple
    std: tuple
    weights: str
    is_random: bool
    identity: str
    device: torch.device

    @property
    def embed_dim(self) -> int:
        """d, the size of the joint image-text space."""
        x = torch.zeros(1, 3, *self.image_size, device=self.device)
        with torch.no_grad():
            return int(self.model.encode_image(x).shape[-1])

    @property
    def logit_scale(self) -> float:
        """CLIP's learned log temperature ``log s`` (logits = exp(log s) * cos); s is capped at 100."""
        return float(min(float(self.model.logit_scale.detach()), float(torch.log(torch.tensor(100.0)))))


def _sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def _config_hash(model_name: str) -> str:
    import open_clip

    cfg = open_clip.get_model_config(model_name)
    return hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _offline_message(model_name: str, tag: str, exc: Exception) -> str:
    return (f"the CLIP weights {model_name!r} / pretrained={tag!r} could not be downloaded "
            f"({type(exc).__name__}: {str(exc)[:300]}). Downloading them needs the network. Either run "
            f"where the network is reachable once (the file is then cached), or give a local checkpoint "
            f"file with `clip_checkpoint: /path/to/open_clip_model.bin`, or use the tiny CPU model "
            f"(`clip_model: pnc-tiny-clip`, random weights - numbers then come from random CLIP weights).")


def load_clip(model_name: str, pretrained: Optional[str] = None, checkpoint: Optional[str] = None,
              device="cpu", *, pretrain_size: str = "quick", cache_dir: Optional[str] = None,
              progress: bool = True) -> ClipBundle:
    """Build a frozen (eval, ``requires_grad=False``) open_clip model.

    Weights, by priority: ``checkpoint`` (a local file) > ``pretrained`` = ``"pnc-shapes"``
    (tiny CLIP pretrained on shapes, built or loaded by
    ``pnc_lib.clip.pretrain.ensure_tiny_clip_checkpoint(pretrain_size)``) > ``pretrained`` = a
    file path > ``pretrained`` = an open_clip tag (downloaded) > none (``None`` or one of
    :data:`RANDOM_TAGS`: random initialisation from a fixed seed, ``is_random=True``).

    Raises :class:`ClipWeightsUnavailable` when the weights cannot be downloaded or the
    checkpoint file does not exist, ``ValueError`` for an unknown model or tag.
    """
    import open_clip

    from .tiny import TINY_CLIP, register_tiny_clip

    register_tiny_clip()
    device = torch.device(device)
    if open_clip.get_model_config(model_name) is None:
        raise ValueError(f"unknown open_clip model {model_name!r}; `open_clip.list_models()` lists them "
                         f"(the CPU model of this book is {TINY_CLIP!r})")
    mean, std = tuple(open_clip.OPENAI_DATASET_MEAN), tuple(open_clip.OPENAI_DATASET_STD)
    kwargs = {}
    ckpt_path: Optional[Path] = None
    is_random = False
    tag = None if pretrained is None or str(pretrained).lower() in RANDOM_TAGS else str(pretrained)

    if checkpoint:
        ckpt_path = Path(checkpoint).expanduser()
        if not ckpt_path.is_file():
            raise ClipWeightsUnavailable(f"clip_checkpoint {str(ckpt_path)!r} does not exist; give the path of an "
                                         f"open_clip checkpoint file for {model_name!r}")
        weights = f"checkpoint:{ckpt_path.name}"
    elif tag == SHAPES_TAG:
        from .pretrain import ensure_tiny_clip_checkpoint  # built by another module, imported lazily

        ckpt_path = Path(ensure_tiny_clip_checkpoint(size=pretrain_size, cache_dir=cache_dir, progress=progress))
        weights = f"{SHAPES_TAG}:{pretrain_size}"
    elif tag is not None and os.path.isfile(tag):
        ckpt_path = Path(tag)
        weights = f"checkpoint:{ckpt_path.name}"
    elif tag is not None:
        pcfg = open_clip.get_pretrained_cfg(model_name, tag)
        if not pcfg:
            raise ValueError(f"pretrained={tag!r} is neither a file nor a known tag of {model_name!r}; known tags: "
                             f"{', '.join(open_clip.list_pretrained_tags_by_model(model_name)) or 'none'}")
        try:
            ckpt_path = Path(open_clip.download_pretrained(pcfg))
        except Exception as exc:  # offline: huggingface_hub / urllib errors
            raise ClipWeightsUnavailable(_offline_message(model_name, tag, exc)) from exc
        if not str(ckpt_path) or not ckpt_path.is_file():
            raise ClipWeightsUnavailable(_offline_message(model_name, tag, FileNotFoundError(str(ckpt_path))))
        # the tag's own preprocessing and activation (OpenAI weights were trained with QuickGELU)
        mean, std = tuple(pcfg.get("mean", mean)), tuple(pcfg.get("std", std))
        kwargs["force_quick_gelu"] = bool(pcfg.get("quick_gelu", False))
        weights = tag
    else:
        weights, is_random = "random-init", True

    if is_random:
        identity = f"{model_name}|random-init|seed{RANDOM_SEED}|cfg:{_config_hash(model_name)}"
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_SEED)
            model = open_clip.create_model(model_name, pretrained=None, device="cpu", **kwargs)
    else:
        identity = (f"{model_name}|{weights}|sha256:{_sha256_file(ckpt_path)}|cfg:{_config_hash(model_name)}"
                    f"|quick_gelu={kwargs.get('force_quick_gelu', False)}")
        model = open_clip.create_model(model_name, pretrained=str(ckpt_path), device="cpu", **kwargs)
    model = model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    size = model.visual.image_size
    size = tuple(size) if isinstance(size, (tuple, list)) else (int(size), int(size))
    return ClipBundle(model=model, tokenizer=open_clip.get_tokenizer(model_name), model_name=model_name,
                      image_size=size, mean=mean, std=std, weights=weights, is_random=is_random,
                      identity=identity, device=device)


def preprocess_images(bundle: ClipBundle, x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) in [0, 1] -> (B, 3, *image_size) normalised CLIP input.

    Resize the shorter side to the CLIP input size (bicubic, antialiased), centre-crop,
    clamp to [0, 1], repeat a single channel three times, then ``(x - mean) / std``.
    """
    if x.dim() != 4:
        raise ValueError(f"images must be (B, C, H, W), got {tuple(x.shape)}")
    x = x.to(bundle.device, torch.float32)
    H, W = bundle.image_size
    h, w = x.shape[-2:]
    if (h, w) != (H, W):
        scale = max(H / h, W / w)
        nh, nw = max(H, round(h * scale)), max(W, round(w * scale))
        x = F.interpolate(x, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False)
        top, left = (nh - H) // 2, (nw - W) // 2
        x = x[..., top:top + H, left:left + W].clamp_(0.0, 1.0)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    elif x.shape[1] != 3:
        raise ValueError(f"CLIP needs 1- or 3-channel images, got {x.shape[1]} channels")
    mean = torch.tensor(bundle.mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(bundle.std, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


@torch.no_grad()
def encode_images(bundle: ClipBundle, x: torch.Tensor) -> torch.Tensor:
    """Image features ``f = normalize(E_img(preprocess(x)))``: (B, C, H, W) in [0, 1] -> (B, d) float32."""
    feats = bundle.model.encode_image(preprocess_images(bundle, x))
    return F.normalize(feats.float(), dim=-1)


@torch.no_grad()
def text_features(bundle: ClipBundle, class_names: Sequence[str], templates: Sequence[str],
                  batch_size: int = 256) -> torch.Tensor:
    """Prompt-ensemble class embeddings (K, d) float32, unit norm.

    ``t_c = normalize(mean_j normalize(E_txt(template_j.format(name_c))))``.
    """
    templates = list(templates or ["{}"])
    prompts = [tpl.format(name) for name in class_names for tpl in templates]
    out = []
    for start in range(0, len(prompts), batch_size):
        tokens = bundle.tokenizer(prompts[start:start + batch_size]).to(bundle.device)
        out.append(F.normalize(bundle.model.encode_text(tokens).float(), dim=-1))
    emb = torch.cat(out).view(len(class_names), len(templates), -1).mean(1)
    return F.normalize(emb, dim=-1)


def zero_shot_logits(image_feats: torch.Tensor, text_feats: torch.Tensor, logit_scale: float) -> torch.Tensor:
    """``exp(logit_scale) * cos(f, t_c)``: (B, d), (K, d) -> (B, K)."""
    return float(torch.exp(torch.tensor(logit_scale))) * F.normalize(image_feats, dim=-1) @ \
        F.normalize(text_feats.to(image_feats), dim=-1).T
