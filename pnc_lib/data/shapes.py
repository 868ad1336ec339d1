"""Procedurally generated "shapes" images: a CPU-sized stand-in for CIFAR-100.

A class is a (shape, colour, texture) combination such as "red striped triangle":
5 x 5 x 4 = 100 classes of 3x32x32 images. Per-image nuisances (position, scale,
rotation, colour jitter, textured background, pixel noise, distractor blobs) make
the task learnable but not trivial. ``domain="pretrain"`` draws from a shifted
distribution (other backgrounds, shades and scales, varied captions), the way web
data differs from CIFAR, for pretraining a tiny CLIP.
"""
from __future__ import annotations

import numpy as np
import torch

SHAPE_NAMES = ("circle", "square", "triangle", "cross", "ring")
COLOUR_NAMES = ("red", "green", "blue", "yellow", "purple")
TEXTURE_NAMES = ("plain", "striped", "dotted", "checkered")
DOMAINS = ("cil", "pretrain")
NUM_COMBINATIONS = len(SHAPE_NAMES) * len(COLOUR_NAMES) * len(TEXTURE_NAMES)

_RGB = np.array([[0.90, 0.12, 0.12], [0.10, 0.70, 0.15], [0.15, 0.30, 0.95],
                 [0.95, 0.85, 0.10], [0.62, 0.15, 0.82]], dtype=np.float32)

# Caption templates; the "cil" domain always uses the first one.
TEMPLATES = (
    "a photo of a {size} {name}.",
    "a {size} {name} on a {background} background.",
    "a drawing of a {name}.",
    "a {shape} that is {colour} and {texture}.",
    "a close-up photo of the {size} {name}.",
)

# Nuisance ranges per domain (scales are radii in units of half the image width).
_DOMAIN = {
    "cil": dict(scale=(0.35, 0.6), hue=0.12, pastel=0.0, bg_level=(0.3, 0.65),
                bg_tint=0.08, gradient=0.0, bg_noise=0.12, noise=(0.03, 0.03),
                distractor=0.3, light_pattern=0.0, templates=1),
    "pretrain": dict(scale=(0.28, 0.72), hue=0.2, pastel=0.35, bg_level=(0.1, 0.9),
                     bg_tint=0.3, gradient=0.7, bg_noise=0.06, noise=(0.0, 0.08),
                     distractor=0.5, light_pattern=0.5, templates=len(TEMPLATES)),
}


def class_name(attrs: dict) -> str:
    """Human-readable class name, e.g. ``"red striped triangle"``."""
    return f"{attrs['colour']} {attrs['texture']} {attrs['shape']}"


def caption(attrs: dict, nuisance: dict | None = None) -> str:
    """Caption for one image, e.g. ``"a photo of a small red striped triangle."``.

    Without ``nuisance`` this is the plain prompt ``"a photo of a <class name>."``;
    with it, the size, background and template drawn by :func:`render` are used.
    """
    if nuisance is None:
        return f"a photo of a {class_name(attrs)}."
    return TEMPLATES[nuisance.get("template", 0)].format(
        name=class_name(attrs), size=nuisance["size"], background=nuisance["background"],
        shape=attrs["shape"], colour=attrs["colour"], texture=attrs["texture"])


def class_attributes(num_classes: int = 100, seed: int = 0) -> list[dict]:
    """The first ``num_classes`` classes of a seeded ordering of all 100 combinations.

    The ordering is greedy: each next class is the (random) combination whose shape,
    colour and texture are least used so far, so any prefix spreads over attributes.
    Each dict has ``shape``, ``colour``, ``texture`` and ``index`` (0..99, fixed id).
    """
    _check(1 <= num_classes <= NUM_COMBINATIONS, f"num_classes must be in 1..100, got {num_classes}")
    combos = [(s, c, t) for s in range(5) for c in range(5) for t in range(4)]
    remaining = list(np.random.default_rng(seed).permutation(len(combos)))
    counts = [np.zeros(5), np.zeros(5), np.zeros(4)]
    out = []
    for _ in range(num_classes):
        cost = [sum(counts[a][combos[i][a]] for a in range(3)) for i in remaining]
        i = int(remaining.pop(int(np.argmin(cost))))
        for a in range(3):
            counts[a][combos[i][a]] += 1
        s, c, t = combos[i]
        out.append(dict(shape=SHAPE_NAMES[s], colour=COLOUR_NAMES[c], texture=TEXTURE_NAMES[t], index=i))
    return out


# Signed distance (negative inside) of each shape, in local units (shape radius ~1).
def _box(u, v, a, b):
    return np.maximum(np.abs(u) - a, np.abs(v) - b)


_SDF = {
    "circle": lambda u, v: np.hypot(u, v) - 0.85,
    "square": lambda u, v: _box(u, v, 0.72, 0.72),
    "triangle": lambda u, v: np.maximum(v, np.abs(u) * 0.866 - v * 0.5) - 0.5,
    "cross": lambda u, v: np.minimum(_box(u, v, 0.92, 0.3), _box(u, v, 0.3, 0.92)),
    "ring": lambda u, v: np.abs(np.hypot(u, v) - 0.72) - 0.24,
}


def _soft(z, sharpness=2.0):
    return np.clip(0.5 + sharpness * z, 0.0, 1.0)


def _texture(name, u, v, period, phase):
    """Pattern in [0, 1] (1 = main colour, 0 = secondary tone), in shape coordinates."""
    a, b = u / period + phase[0], v / period + phase[1]
    if name == "striped":
        return _soft(np.sin(2 * np.pi * a))
    if name == "checkered":
        return _soft(2 * np.sin(2 * np.pi * a) * np.sin(2 * np.pi * b))
    if name == "dotted":
        return _soft(8 * (np.hypot(a - np.floor(a) - 0.5, b - np.floor(b) - 0.5) - 0.27), 1.0)
    return np.ones_like(u)


def _hue_matrices(theta):
    """(N, 3, 3) rotations about the grey axis: a cheap hue shift by ``theta`` radians."""
    k = np.ones(3) / np.sqrt(3)
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    c, s = np.cos(theta)[:, None, None], np.sin(theta)[:, None, None]
    return c * np.eye(3) + s * kx + (1 - c) * np.outer(k, k)


def _smooth_noise(rng, n, size, cells=5):
    """(N, H, W) low-frequency noise in [-1, 1]: a random grid upsampled bilinearly."""
    grid = rng.uniform(-1, 1, (n, cells, cells))
    pos = np.linspace(0, cells - 1, size)
    i0 = np.minimum(pos.astype(int), cells - 2)
    w = (pos - i0)[None, :]
    rows = grid[:, i0] * (1 - w[..., None]) + grid[:, i0 + 1] * w[..., None]
    return rows[:, :, i0] * (1 - w[:, None]) + rows[:, :, i0 + 1] * w[:, None]


def render(attrs_list: list[dict], rng: np.random.Generator, domain: str = "cil",
           image_size: int = 32) -> tuple[np.ndarray, list[dict]]:
    """Render one image per attribute dict.

    Returns a float32 array (N, 3, H, W) in [0, 1] and one dict of nuisance values
    per image (``size`` is "small"/"large", usable in captions).
    """
    _check(domain in _DOMAIN, f"domain must be one of {DOMAINS}, got {domain!r}")
    p, n, size = _DOMAIN[domain], len(attrs_list), image_size
    g = ((np.arange(size) + 0.5) / size * 2 - 1).astype(np.float32)
    yy, xx = np.meshgrid(g, g, indexing="ij")

    # Geometry: scale, position and rotation -> shape-local coordinates (u, v).
    scale = rng.uniform(*p["scale"], n)
    cx, cy = rng.uniform(-1, 1, (2, n)) * np.maximum(0.92 - scale, 0.0)
    angle = rng.uniform(0, 2 * np.pi, n)
    col = lambda z: z[:, None, None]  # noqa: E731  per-image scalar -> (N, 1, 1)
    dx, dy = (xx - col(cx)) / col(scale), (yy - col(cy)) / col(scale)
    cos, sin = col(np.cos(angle)), col(np.sin(angle))
    u, v = cos * dx + sin * dy, -sin * dx + cos * dy

    # Shape mask (anti-aliased) and texture, computed group-wise per attribute value.
    period, phase = col(rng.uniform(0.5, 0.75, n)), rng.uniform(0, 1, (2, n, 1, 1))
    dist, tex = np.empty_like(u), np.empty_like(u)
    shapes = np.array([a["shape"] for a in attrs_list])
    textures = np.array([a["texture"] for a in attrs_list])
    for name, sdf in _SDF.items():
        m = shapes == name
        dist[m] = sdf(u[m], v[m])
    for name in TEXTURE_NAMES:
        m = textures == name
        tex[m] = _texture(name, u[m], v[m], period[m], phase[:, m])
    alpha = np.clip(0.5 - dist * col(scale) * size / 2, 0.0, 1.0)[:, None]

    # Colour jitter: hue rotation, brightness, (pretrain) pastel shades.
    base = _RGB[[COLOUR_NAMES.index(a["colour"]) for a in attrs_list]]
    hue = rng.normal(0, p["hue"], n)
    colour = np.einsum("nij,nj->ni", _hue_matrices(hue), base) * rng.uniform(0.75, 1.1, (n, 1))
    colour = np.clip(colour, 0, 1)
    colour += (1 - colour) * rng.uniform(0, p["pastel"], (n, 1))
    light = rng.random(n) < p["light_pattern"]
    second = np.where(light[:, None], colour + (1 - colour) * 0.7, colour * 0.3)
    fg = second[:, :, None, None] + (colour - second)[:, :, None, None] * tex[:, None]

    # Background: tinted level, optional two-colour gradient, smooth noise.
    c0 = np.clip(rng.uniform(*p["bg_level"], (n, 1)) + rng.uniform(-1, 1, (n, 3)) * p["bg_tint"], 0, 1)
    c1 = np.clip(rng.uniform(*p["bg_level"], (n, 1)) + rng.uniform(-1, 1, (n, 3)) * p["bg_tint"], 0, 1)
    c1 = np.where((rng.random(n) < p["gradient"])[:, None], c1, c0)
    phi = rng.uniform(0, 2 * np.pi, n)
    ramp = (0.5 + 0.5 * (col(np.cos(phi)) * xx + col(np.sin(phi)) * yy) / np.sqrt(2))[:, None]
    img = c0[:, :, None, None] + (c1 - c0)[:, :, None, None] * ramp
    img = img + p["bg_noise"] * _smooth_noise(rng, n, size)[:, None]
    background = img.mean(axis=(1, 2, 3))

    # Distractor: a small blob of random colour behind the shape.
    has_blob = rng.random(n) < p["distractor"]
    bx, by = rng.uniform(-0.9, 0.9, (2, n))
    sigma = rng.uniform(0.06, 0.12, n)
    blob = 0.9 * col(has_blob) * np.exp(-((xx - col(bx)) ** 2 + (yy - col(by)) ** 2) / col(2 * sigma**2))
    img = img * (1 - blob[:, None]) + rng.uniform(0, 1, (n, 3, 1, 1)) * blob[:, None]

    img = img * (1 - alpha) + fg * alpha
    img = img + rng.normal(0, 1, img.shape) * rng.uniform(*p["noise"], (n, 1, 1, 1))
    template = rng.integers(0, p["templates"], n)
    mid = sum(p["scale"]) / 2
    nuisance = [dict(size="small" if scale[i] < mid else "large", scale=float(scale[i]),
                     x=float(cx[i]), y=float(cy[i]), angle=float(np.degrees(angle[i])),
                     hue_shift=float(hue[i]), distractor=bool(has_blob[i]), template=int(template[i]),
                     background="dark" if background[i] < 0.35 else "light" if background[i] > 0.65 else "grey")
                for i in range(n)]
    return np.clip(img, 0, 1).astype(np.float32), nuisance


def make_shapes(num_classes: int = 100, train_per_class: int = 100, test_per_class: int = 30,
                seed: int = 0, domain: str = "cil", image_size: int = 32) -> dict:
    """Build a train/test split of the shapes dataset.

    Classes are ``class_attributes(num_classes, seed)`` (so the seed also picks the
    class order, as CIL benchmarks do); labels follow that order. Each class and
    split has its own random stream, so outputs are bit-identical for equal arguments.
    Returns ``train_x``/``test_x`` (float32 (N, 3, H, W) in [0, 1]), ``train_y``/``test_y``
    (int64), ``class_names``, ``attributes`` and ``train_captions``/``test_captions``.
    """
    _check(isinstance(num_classes, (int, np.integer)), "num_classes must be an int")
    _check(train_per_class >= 1 and test_per_class >= 1, "train_per_class and test_per_class must be >= 1")
    _check(domain in _DOMAIN, f"domain must be one of {DOMAINS}, got {domain!r}")
    _check(image_size >= 8, f"image_size must be >= 8, got {image_size}")
    attrs = class_attributes(num_classes, seed)
    out = {"class_names": [class_name(a) for a in attrs], "attributes": attrs}
    for split_id, (split, per_class) in enumerate([("train", train_per_class), ("test", test_per_class)]):
        xs, caps = [], []
        for a in attrs:
            rng = np.random.default_rng([seed, split_id, DOMAINS.index(domain), a["index"]])
            x, nuisance = render([a] * per_class, rng, domain, image_size)
            xs.append(x)
            caps += [caption(a, nz) for nz in nuisance]
        out[f"{split}_x"] = torch.from_numpy(np.concatenate(xs))
        out[f"{split}_y"] = torch.arange(len(attrs)).repeat_interleave(per_class)
        out[f"{split}_captions"] = caps
    return out


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)
