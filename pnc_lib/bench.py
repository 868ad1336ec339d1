"""The benchmark: what the library's choices buy, as ratios measured in one run on one machine.

    python -m pnc_lib.bench                  # the full benchmark (a few minutes on a laptop CPU)
    python -m pnc_lib.bench --quick          # the smallest configuration (tests use it)
    python -m pnc_lib.bench --out bench.json # also save every figure and the machine as JSON
    python -m pnc_lib.bench --profile        # add torch.profiler tables of the SCL-PNC step

Every timing is the median of interleaved repeats (library, baseline, library, ...), taken with
``torch.set_num_threads(1)`` for both sides, and by default on the process's CPU clock (user +
system seconds; ``--clock wall`` for elapsed time), so the ratios hold on a busy machine whose
absolute times do not. Nothing here asserts a time: the figures are printed, one table.

What is measured (one row each, see :func:`run_bench`):

* **CLIP adapter, one task, cached vs encode-every-epoch.** The library trains the adapter of
  a task from the feature cache (:mod:`pnc_lib.clip.cache`: the frozen encoder runs once per
  image). The baseline is the reference code's way: the same adapter, loss and optimiser, with
  every batch of images encoded by CLIP in every epoch. For the tiny CPU CLIP and for larger
  random-weight open_clip encoders (a wider/deeper tiny ViT and ViT-B-32 at 224 px), with their
  visual parameters and GFLOP per image, to show how the ratio grows with the encoder.
* **SCL-PNC training throughput** (images/s) of the library's ``train_task`` (engine batching,
  statistics, finite-loss check, clipping) vs a bare PyTorch loop of the same model, with the
  DR loss and SGD written here; plus the share of a step spent in batching + augmentation.
* **Evaluation** of all seen classes (``Run.evaluate``): time per 10,000 test images, passes over
  the test data and DataLoaders built per evaluation.
* **Herding** at CIFAR-100 size (100 classes x 500 samples, 128-d, 20 exemplars per class).
* **Peak RSS** of a ``quick`` run of SCL-PNC and of CLIP fusion (each in a child process; its
  high-water mark ``VmHWM``) and **feature cache bytes** per 10,000 images (the size of the cache
  file that ``cached_features`` writes, for d = 64 and d = 512).

``--quick`` runs the same rows on smaller sizes (two encoders, smoke-preset child runs).
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime as _dt
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional

import torch
import torch.nn.functional as F

# a wider/deeper tiny ViT (same 32 px input) between pnc-tiny-clip and ViT-B-32
WIDE_CLIP = "pnc-bench-clip-wide"
WIDE_CLIP_CONFIG = {
    "embed_dim": 256,
    "vision_cfg": {"image_size": 32, "layers": 6, "width": 256, "head_width": 64, "patch_size": 4},
    "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 128, "heads": 4, "layers": 3},
}

#: sizes of the two configurations. CLIP encoders: (model, images in the task, epochs, repeats).
SIZES = {
    "full": {
        "clip": [("pnc-tiny-clip", 320, 2, 3), (WIDE_CLIP, 128, 1, 3), ("ViT-B-32", 32, 1, 2)],
        "scl_repeats": 5, "scl_per_class": 120, "eval_repeats": 3,
        "herd_classes": 100, "herd_per_class": 500, "herd_repeats": 3,
        "rss_scl": {"method": "scl_pnc", "dataset": "shapes", "preset": "quick"},
        "rss_clip": {"method": "clip_awpf", "dataset": "shapes", "preset": "quick",
                     "clip_pretrained": "random-init"},
        "cache_images": 10_000,
    },
    "quick": {
        "clip": [("pnc-tiny-clip", 30, 1, 1), (WIDE_CLIP, 10, 1, 1)],
        "scl_repeats": 1, "scl_per_class": 16, "eval_repeats": 1,
        "herd_classes": 100, "herd_per_class": 500, "herd_repeats": 1,
        "rss_scl": {"method": "scl_pnc", "dataset": "digits", "preset": "smoke", "base": 2, "increment": 2},
        "rss_clip": {"method": "clip_awpf", "dataset": "shapes", "preset": "smoke", "base": 2, "increment": 2,
                     "clip_pretrained": "random-init",
                     "dataset_kwargs": {"num_classes": 4, "train_per_class": 10, "test_per_class": 5}},
        "cache_images": 1_000,
    },
}

TARGET_CLIP = 20.0          # cached adapter training >= 20x faster than encode-every-epoch (tiny CLIP)
TARGET_OVERHEAD = 10.0      # library step <= 10% slower than a bare loop


@dataclass
class Row:
    """One line of the table. ``value`` is the library's figure; ``baseline`` what it is compared
    with (None for a plain measurement); ``ratio`` baseline/library time (a speed-up) or, for
    throughput, the overhead in percent; ``met``: the target's verdict (None without a target)."""

    key: str
    what: str
    value: float
    unit: str
    baseline: Optional[float] = None
    ratio: Optional[float] = None
    ratio_unit: str = ""
    target: str = ""
    met: Optional[bool] = None
    note: str = ""
    extra: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------- helpers
def _median(xs: List[float]) -> float:
    return float(statistics.median(xs))


#: the clock of every timing: "cpu" (default) = CPU seconds of this process (user + system, all
#: its threads; with one torch thread, the work done), which waiting for a busy machine's cores
#: does not inflate; "wall" = elapsed time. Both are recorded in the JSON.
CLOCK = {"name": "cpu"}
_WALL: List[float] = []   # the wall time of the last _timed call


def _timed(fn: Callable[[], object]) -> float:
    """Seconds ``fn()`` takes on the chosen clock (see :data:`CLOCK`)."""
    c, w = time.process_time(), time.perf_counter()
    fn()
    cpu, wall = time.process_time() - c, time.perf_counter() - w
    _WALL[:] = [wall]
    return wall if CLOCK["name"] == "wall" else cpu


def interleaved(fns: dict, repeats: int, inner: Optional[dict] = None) -> dict:
    """Run every callable of ``fns`` ``repeats`` times (``inner[k]`` times in a row for a cheap
    one), in an order that rotates each repeat so that neither side always runs first; the
    median seconds of each, and under ``"_all"`` / ``"_wall"`` every time on the clock / on the wall."""
    names, inner = list(fns), inner or {}
    times, walls = {k: [] for k in names}, {k: [] for k in names}
    for r in range(repeats):
        order = names[r % len(names):] + names[:r % len(names)]
        for k in order:
            for _ in range(inner.get(k, 1)):
                times[k].append(_timed(fns[k]))
                walls[k].append(_WALL[0])
    return {k: _median(v) for k, v in times.items()} | {"_all": times, "_wall": walls}


def machine_description() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = None
    try:
        import psutil

        mem = round(psutil.virtual_memory().total / 2**30, 1)
    except Exception:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": mem, "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__, "torch_threads": 1,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "load_average_at_start": round(load, 2) if load is not None else None,
            "date": _dt.date.today().isoformat()}


def _register_wide_clip(tmp: Path) -> None:
    import open_clip

    if open_clip.get_model_config(WIDE_CLIP) is None:
        path = tmp / f"{WIDE_CLIP}.json"
        path.write_text(json.dumps(WIDE_CLIP_CONFIG))
        open_clip.add_model_config(path)


# ---------------------------------------------------------------------------------- CLIP
def _clip_run(model: str, images: int, epochs: int, tmp: Path):
    """A one-task ``shapes`` scenario (10 classes, ``images`` train images in all) and a
    ``clip_adapter`` run on it (quick preset settings, random weights, private cache)."""
    from .engine import Run
    from .scenario import make_scenario

    kwargs = {"num_classes": 10, "train_per_class": max(images // 10, 1), "test_per_class": 1}
    scenario = make_scenario("shapes", base=10, increment=10, seed=0, **kwargs)
    cfg = {"method": "clip_adapter", "dataset": "shapes", "preset": "quick", "base": 10, "increment": 10,
           "dataset_kwargs": kwargs, "clip_model": model, "clip_pretrained": "random-init",
           "epochs": epochs, "lr_milestones": [], "progress": False, "device": "cpu",
           "cache_dir": str(tmp / "cache"), "out_dir": str(tmp / f"run_{model}")}
    return Run(cfg, scenario=scenario)


def _encoder_size(bundle) -> tuple:
    """(visual parameters, GFLOP per image of the image encoder incl. its preprocessing)."""
    from torch.utils.flop_counter import FlopCounterMode

    from .clip.model import preprocess_images

    params = sum(p.numel() for p in bundle.model.visual.parameters())
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        bundle.model.encode_image(preprocess_images(bundle, x))
    return params, counter.get_total_flops() / 1e9


def encode_every_epoch_training(bundle, images, labels, text, logit_scale, epochs, batch_size, lr, seed=0):
    """The reference code's adapter training: every batch of images goes through the frozen
    CLIP image encoder in every epoch, then the same identity-initialised adapter, the same
    cosine logits and cross-entropy, and Adam."""
    from .clip.adapter import clip_logits, make_adapter
    from .clip.model import encode_images

    adapter = make_adapter(text.shape[1])
    opt = torch.optim.Adam(adapter.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    n = len(labels)
    for _ in range(epochs):
        perm = torch.randperm(n, generator=g)
        for start in range(0, n, batch_size):
            b = perm[start:start + batch_size]
            with torch.no_grad():
                f = encode_images(bundle, images[b])
            loss = F.cross_entropy(clip_logits(adapter(f), text, logit_scale), labels[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return adapter


def bench_clip(sizes: dict, tmp: Path, rows: List[Row]) -> None:
    from .clip.cache import STATS, cached_features
    from .methods import TaskContext

    _register_wide_clip(tmp)
    for model, images, epochs, repeats in sizes["clip"]:
        run = _clip_run(model, images, epochs, tmp)
        method, s, cfg = run.method, run.scenario, run.cfg
        bundle = method._load_bundle()
        params, gflop = _encoder_size(bundle)
        parts = {"dataset": cfg.dataset, "dataset_kwargs": cfg.dataset_kwargs, "split": "train"}

        def lookup():   # the call _ensure_ready makes for the train split
            return cached_features(bundle, s.train, parts, batch_size=cfg.eval_batch_size, device=method.device,
                                   progress=False, cache_dir=cfg.cache_dir, num_workers=cfg.num_workers)
        encoded0 = STATS["images_encoded"]
        t_build = _timed(lookup)                     # a miss: encodes the train split once, writes the file
        n_encoded = STATS["images_encoded"] - encoded0
        t_hit = _timed(lookup)                       # a hit: reads and verifies the file
        method._ensure_ready()                       # train: hit; test split and text features
        idx = s.indices("train", task=0)
        n = len(idx)
        ctx = TaskContext(task=0, indices=idx, new_classes=s.task_classes(0), seen_classes=s.seen_classes(0),
                          progress=False)
        method.begin_task(0)
        text = method.text[:s.seen_classes(0)]
        x_task, y_task = s.train.x[torch.as_tensor(idx)], s.train.y[torch.as_tensor(idx)]
        method.train_task(ctx)   # warm-up of the cached side (the encoder is warm from the cache build)
        med = interleaved({
            "cached": lambda: method.train_task(ctx),
            "encode": lambda: encode_every_epoch_training(bundle, x_task, y_task, text, method.logit_scale,
                                                          epochs, cfg.batch_size, cfg.lr),
        }, repeats, inner={"cached": 5})
        ratio = med["encode"] / med["cached"]
        ratio_wall = _median(med["_wall"]["encode"]) / _median(med["_wall"]["cached"])
        is_tiny = model == "pnc-tiny-clip"
        rows.append(Row(
            key=f"clip_cached_vs_encode[{model}]",
            what=f"CLIP adapter, one task: cached features vs encode every epoch ({model})",
            value=med["cached"], unit="s", baseline=med["encode"], ratio=ratio, ratio_unit="x faster",
            target=f">= {TARGET_CLIP:g}x" if is_tiny else "", met=(ratio >= TARGET_CLIP) if is_tiny else None,
            note=(f"{params / 1e6:.2f}M visual params, {gflop:.3g} GFLOP/img; {n} images x {epochs} epoch(s), "
                  f"batch {cfg.batch_size}, d={text.shape[1]}; per image and epoch "
                  f"{1e3 * med['encode'] / (n * epochs):.2f} ms vs {1e6 * med['cached'] / (n * epochs):.0f} us"),
            extra={"visual_params": params, "gflop_per_image": gflop, "images": n, "epochs": epochs,
                   "repeats": repeats, "times": med["_all"], "wall_times": med["_wall"],
                   "ratio_wall_clock": ratio_wall, "embed_dim": int(text.shape[1]),
                   "cache_build_s": t_build, "images_encoded_by_build": n_encoded, "cache_hit_s": t_hit}))
        # what the cache costs: one encoding pass over the split (encode-every-epoch pays it every epoch)
        enc_per_image = t_build / max(n_encoded, 1)
        rows.append(Row(
            key=f"clip_cache_build[{model}]",
            what=f"CLIP feature cache: one encoding pass, then hits ({model})",
            value=enc_per_image * 10_000, unit="s / 10k img",
            note=(f"built once per dataset and model ({n_encoded} images in {t_build:.2f} s); a hit for "
                  f"{n} images reads in {t_hit * 1000:.0f} ms"),
            extra={"build_s": t_build, "images": n_encoded, "hit_s": t_hit}))


# ---------------------------------------------------------------------------------- SCL-PNC
def _scl_run(per_class: int, tmp: Path, epochs: int = 1):
    from .engine import Run

    kwargs = {"num_classes": 20, "train_per_class": per_class, "test_per_class": 40}
    # the DR loss, as in the bare loop (the quick preset's default is CE on the ETF logits)
    cfg = {"method": "scl_pnc", "dataset": "shapes", "preset": "quick", "dataset_kwargs": kwargs, "loss": "dr",
           "epochs": epochs, "augment": False, "progress": False, "device": "cpu",
           "out_dir": str(tmp / "run_scl_pnc")}
    return Run(cfg)


def bare_scl_pnc_epoch(model, X, Y, epochs, batch_size, lr, momentum, weight_decay, grad_clip, seed=0):
    """A bare PyTorch loop over the same SCL-PNC network (task 0: base + module 0 + adapt-layer +
    the ETF head's BatchNorm): data already normalised in one tensor, the DR loss and SGD written
    here, no statistics, no checks."""
    bb, adapt, head = model["backbone"], model["adapt"], model["head"]
    base, module, bn = bb.base, bb.expansions[0], head.bn
    M_t = head.etf.detach().T.contiguous()                        # (K, p)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    g = torch.Generator().manual_seed(seed)
    model.train()
    n = len(Y)
    for _ in range(epochs):
        perm = torch.randperm(n, generator=g)
        for start in range(0, n, batch_size):
            b = perm[start:start + batch_size]
            x, y = X[b], Y[b]
            h = F.normalize(bn(adapt(module(base(x)))), dim=1)
            loss = 0.5 * (((h * M_t[y]).sum(1) - 1.0) ** 2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
            opt.step()


def _profile(fn: Callable[[], object], label: str, rows: int = 15) -> str:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)
    return f"--- torch.profiler: {label} (self CPU time) ---\n{table}"


def bench_scl_pnc(sizes: dict, tmp: Path, rows: List[Row], profile: bool = False) -> list:
    from .methods import TaskContext

    run = _scl_run(sizes["scl_per_class"], tmp)
    m, s, cfg = run.method, run.scenario, run.cfg
    m.begin_task(0)
    idx = s.indices("train", task=0)
    n = len(idx)
    ctx = TaskContext(task=0, indices=idx, new_classes=s.task_classes(0), seen_classes=s.seen_classes(0),
                      progress=False)
    cfg_aug = dataclasses.replace(cfg, augment=True)      # the quick preset's default on shapes

    def library(augment: bool):
        m.cfg = cfg_aug if augment else cfg
        try:
            m.train_task(ctx)
        finally:
            m.cfg = cfg

    def batching_only():                                    # batching + augmentation + normalisation
        m.cfg = cfg_aug
        try:
            for _ in m._batches("train", idx, train=True):
                pass
        finally:
            m.cfg = cfg

    bare = copy.deepcopy(m.model)
    mean = torch.tensor(s.mean).view(1, -1, 1, 1)
    std = torch.tensor(s.std).view(1, -1, 1, 1)
    X = ((s.train.x[torch.as_tensor(idx)] - mean) / std).to(m.device).contiguous()
    Y = s.train.y[torch.as_tensor(idx)].to(m.device)
    wd = cfg.weight_decay

    def bare_loop():
        bare_scl_pnc_epoch(bare, X, Y, cfg.epochs, cfg.batch_size, cfg.lr, cfg.momentum, wd, cfg.grad_clip)

    library(False)   # warm-up (first-call allocations) on both sides
    bare_loop()
    med = interleaved({"library": lambda: library(False), "bare": bare_loop,
                       "library_aug": lambda: library(True), "batches": batching_only}, sizes["scl_repeats"])
    ips_lib, ips_bare = n / med["library"], n / med["bare"]
    overhead = 100.0 * (med["library"] / med["bare"] - 1.0)
    overhead_wall = 100.0 * (_median(med["_wall"]["library"]) / _median(med["_wall"]["bare"]) - 1.0)
    rows.append(Row(
        key="scl_pnc_step_vs_bare",
        what="SCL-PNC training throughput: library train_task vs bare PyTorch loop",
        value=ips_lib, unit="img/s", baseline=ips_bare, ratio=overhead, ratio_unit="% overhead",
        target=f"<= {TARGET_OVERHEAD:g}%", met=overhead <= TARGET_OVERHEAD,
        note=(f"{cfg.backbone} w{cfg.width} module {cfg.module_width}, adapt {cfg.adapt_hidden}->{cfg.adapt_out}, "
              f"task 0, {n} images, batch {cfg.batch_size}, no augmentation"),
        extra={"times": med["_all"], "wall_times": med["_wall"], "overhead_wall_clock_pct": overhead_wall,
               "images": n}))
    share = 100.0 * med["batches"] / med["library_aug"]
    rows.append(Row(
        key="scl_pnc_data_share",
        what="SCL-PNC data loading: batching + crop/flip + normalise, share of a training epoch",
        value=share, unit="% of step", target="not the bottleneck", met=share < 25.0,
        note=(f"in-memory tensors sliced per batch, no DataLoader; with augmentation "
              f"{n / med['library_aug']:.0f} img/s"),
        extra={"batches_s": med["batches"], "library_aug_s": med["library_aug"]}))
    profiles = []
    if profile:
        profiles.append(_profile(lambda: library(False), "library train_task, one epoch"))
        profiles.append(_profile(bare_loop, "bare loop, one epoch"))
    return [run] + profiles


def bench_eval(run, sizes: dict, rows: List[Row]) -> None:
    """Run.evaluate at task 1 (every seen class, both modules): time, passes, DataLoaders built."""
    import torch.utils.data as tud

    m, s = run.method, run.scenario
    m.begin_task(1)
    n_test = len(s.indices("test", upto=1))
    counts = {"loaders": 0, "predict": 0}
    orig_init, orig_predict = tud.DataLoader.__init__, m.predict

    def counting_init(self, *a, **k):
        counts["loaders"] += 1
        orig_init(self, *a, **k)

    def counting_predict(*a, **k):
        counts["predict"] += 1
        return orig_predict(*a, **k)

    tud.DataLoader.__init__, m.predict = counting_init, counting_predict
    try:
        times = [_timed(lambda: run.evaluate(1)) for _ in range(sizes["eval_repeats"])]
    finally:
        tud.DataLoader.__init__ = orig_init
        del m.predict
    reps = sizes["eval_repeats"]
    t = _median(times)
    rows.append(Row(
        key="eval_all_seen",
        what="Evaluation of all seen classes (Run.evaluate, SCL-PNC, 2 modules)",
        value=t * 10_000 / n_test, unit="s / 10k img",
        note=(f"{n_test} test images, batch {run.cfg.eval_batch_size}; per evaluation {counts['predict'] / reps:g} "
              f"pass over the test data, {counts['loaders'] / reps:g} DataLoaders built (tensor slices)"),
        extra={"times": times, "test_images": n_test, "passes_per_eval": counts["predict"] / reps,
               "loaders_per_eval": counts["loaders"] / reps}))


# ---------------------------------------------------------------------------------- herding
def bench_herding(sizes: dict, rows: List[Row], dim: int = 128, per_class_memory: int = 20) -> None:
    from .memory import ExemplarMemory

    C, P = sizes["herd_classes"], sizes["herd_per_class"]
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(C * P, dim, generator=g)
    labels = torch.arange(C).repeat_interleave(P)

    def herd():
        mem = ExemplarMemory(per_class_memory * C)
        mem.update(labels, range(C), C, lambda idx: feats[torch.as_tensor(idx)])
        assert len(mem.indices) == per_class_memory * C
    times = [_timed(herd) for _ in range(sizes["herd_repeats"])]
    rows.append(Row(
        key="herding_cifar100",
        what=f"Herding at CIFAR-100 size ({C} classes x {P}, {dim}-d, {per_class_memory}/class)",
        value=_median(times), unit="s", target="seconds, not minutes", met=_median(times) < 60.0,
        note="ExemplarMemory.update on synthetic features (features already computed)",
        extra={"times": times}))


# ---------------------------------------------------------------------------------- memory
# The child reads its peak from /proc/self/status (VmHWM: the high-water mark of this program's
# memory since exec). ru_maxrss is not used on Linux: a child's ru_maxrss (and RUSAGE_CHILDREN)
# starts from the RSS of the *parent* at fork time, here the benchmark's own ~1 GiB.
_CHILD = r"""
import json, resource, sys, time
def peak_kib():
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
import torch
torch.set_num_threads(1)
import pnc_lib, pnc_lib.engine
cfg = json.loads(sys.argv[1])
start = peak_kib()
t = time.perf_counter()
r = pnc_lib.run(cfg)
print("BENCH_CHILD " + json.dumps({"import_kib": start, "peak_kib": peak_kib(), "wall_s": time.perf_counter() - t,
                                   "last_accuracy": r.last_accuracy}))
"""


def peak_rss_of_run(cfg: dict, tmp: Path) -> dict:
    """Run ``cfg`` in a fresh Python process (1 thread, private cache); its peak RSS (KiB)."""
    cfg = dict(cfg, progress=False, device="cpu", out_dir=str(tmp / f"rss_{cfg['method']}"))
    env = dict(os.environ, PNC_CACHE=str(tmp / "rss_cache"), OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(cfg)], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"the {cfg['method']} run for the peak-memory figure failed:\n{out.stderr[-3000:]}")
    line = [x for x in out.stdout.splitlines() if x.startswith("BENCH_CHILD ")][-1]
    return json.loads(line.split(" ", 1)[1])


def bench_peak_memory(sizes: dict, tmp: Path, rows: List[Row]) -> None:
    for label, cfg in (("scl_pnc", sizes["rss_scl"]), ("clip", sizes["rss_clip"])):
        res = peak_rss_of_run(cfg, tmp)
        rows.append(Row(
            key=f"peak_rss[{label}]",
            what=f"Peak RSS of a {cfg['preset']} run: {cfg['method']} on {cfg['dataset']}",
            value=res["peak_kib"] / 1024, unit="MiB",
            note=(f"child process, VmHWM; of which python + torch + pnc_lib imported: "
                  f"{res['import_kib'] / 1024:.0f} MiB; run {res['wall_s']:.0f} s"),
            extra=res))


def bench_cache_size(sizes: dict, tmp: Path, rows: List[Row]) -> None:
    """Write a feature cache for N 32x32 RGB images with a stand-in encoder of output size d (the
    file does not depend on the feature values) and report the file's bytes per 10,000 images,
    and the time of a cache hit (read, checksum, and the image fingerprint of the key)."""
    from types import SimpleNamespace

    from .clip.cache import cache_key, cached_features, features_dir
    from .data.datasets import DataSplit

    n = sizes["cache_images"]
    g = torch.Generator().manual_seed(0)
    split = DataSplit(x=torch.rand(n, 3, 32, 32, generator=g), y=torch.zeros(n, dtype=torch.long))
    for d, like in ((64, "pnc-tiny-clip"), (512, "ViT-B-16")):
        bundle = SimpleNamespace(identity=f"bench-standin-{like}-{d}", image_size=(224, 224),
                                 mean=(0.48, 0.46, 0.41), std=(0.27, 0.26, 0.28))
        parts = {"dataset": "bench", "split": "train", "d": d}
        cache = str(tmp / "size_cache")
        cached_features(bundle, split, parts, batch_size=1000, progress=False, cache_dir=cache,
                        encoder=lambda x, d=d: torch.randn(x.shape[0], d))
        key, _ = cache_key(bundle, split, parts)
        size = (features_dir(cache) / f"{key}.pt").stat().st_size
        t_hit = _timed(lambda: cached_features(bundle, split, parts, progress=False, cache_dir=cache))
        rows.append(Row(
            key=f"feature_cache[{d}d]",
            what=f"Feature cache file per 10,000 images, d={d} (size of {like})",
            value=size * 10_000 / n / 1e6, unit="MB / 10k img",
            note=(f"{n} images -> {size / 1e6:.2f} MB file (float32: {4 * d * 10_000 / 1e6:.2f} MB / 10k); "
                  f"a hit reads + verifies it in {t_hit * 10_000 / n:.2f} s / 10k (incl. image fingerprint)"),
            extra={"file_bytes": size, "images": n, "hit_s": t_hit}))


# ---------------------------------------------------------------------------------- the table
def _fmt(x: Optional[float]) -> str:
    if x is None:
        return ""
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    ax = abs(x)
    if ax >= 1000:
        return f"{x:,.0f}"
    if ax >= 100:
        return f"{x:.0f}"
    if ax >= 10:
        return f"{x:.1f}"
    if ax >= 0.01:
        return f"{x:.3g}"
    return f"{x:.2e}"


def format_table(rows: List[Row]) -> str:
    head = ("| measure | library | baseline | ratio | target | met | notes |\n"
            "| --- | --- | --- | --- | --- | --- | --- |")
    lines = [head]
    for r in rows:
        val = f"{_fmt(r.value)} {r.unit}"
        base = f"{_fmt(r.baseline)} {r.unit}" if r.baseline is not None else ""
        ratio = f"{_fmt(r.ratio)} {r.ratio_unit}" if r.ratio is not None else ""
        met = "" if r.met is None else ("yes" if r.met else "NO")
        lines.append(f"| {r.what} | {val} | {base} | {ratio} | {r.target} | {met} | {r.note} |")
    return "\n".join(lines)


def run_bench(quick: bool = False, profile: bool = False, clock: str = "cpu", log=print) -> dict:
    """Run every measurement; returns ``{"machine", "mode", "clock", "rows", "table", "wall_s", "profiles"}``."""
    if clock not in ("cpu", "wall"):
        raise ValueError(f"clock must be 'cpu' or 'wall', not {clock!r}")
    sizes = SIZES["quick" if quick else "full"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    CLOCK["name"] = clock
    t0 = time.perf_counter()
    machine = machine_description()
    rows: List[Row] = []
    profiles: list = []
    try:
        with tempfile.TemporaryDirectory(prefix="pnc_bench_") as d:
            tmp = Path(d)
            steps = [("CLIP: cached vs encode every epoch", lambda: bench_clip(sizes, tmp, rows)),
                     ("SCL-PNC: library step vs bare loop", None),
                     ("herding", lambda: bench_herding(sizes, rows)),
                     ("feature cache size", lambda: bench_cache_size(sizes, tmp, rows)),
                     ("peak RSS of quick runs (child processes)", lambda: bench_peak_memory(sizes, tmp, rows))]
            for label, fn in steps:
                t = time.perf_counter()
                if fn is None:   # SCL-PNC, then evaluation on the same run
                    out = bench_scl_pnc(sizes, tmp, rows, profile=profile)
                    profiles.extend(out[1:])
                    bench_eval(out[0], sizes, rows)
                else:
                    fn()
                log(f"[bench] {label}: {time.perf_counter() - t:.1f} s")
    finally:
        torch.set_num_threads(threads)
        CLOCK["name"] = "cpu"
    table = format_table(rows)
    return {"machine": machine, "mode": "quick" if quick else "full", "clock": clock,
            "rows": [dataclasses.asdict(r) for r in rows], "table": table, "wall_s": time.perf_counter() - t0,
            "profiles": profiles}


def describe_machine(m: dict) -> str:
    mem = f", {m['memory_gib']} GiB RAM" if m.get("memory_gib") else ""
    gpu = f", GPU {m['cuda']}" if m.get("cuda") else ", no GPU"
    return (f"{m['date']}: {m['cpu']}, {m['cores']} cores{mem}{gpu}; {m['platform']}; Python {m['python']}, "
            f"torch {m['torch']}, 1 torch thread; load average at start {m['load_average_at_start']}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pnc_lib.bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="the smallest configuration (under a minute; tests use it)")
    ap.add_argument("--out", metavar="FILE.json", help="also write the figures and the machine as JSON")
    ap.add_argument("--profile", action="store_true",
                    help="print torch.profiler tables of one SCL-PNC epoch (library and bare loop)")
    ap.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                    help="time on the process's CPU clock (default: robust to other load) or the wall clock")
    args = ap.parse_args(argv)
    res = run_bench(quick=args.quick, profile=args.profile, clock=args.clock,
                    log=lambda s: print(s, file=sys.stderr, flush=True))
    print(f"pnc_lib benchmark ({res['mode']}, {res['clock']} clock, medians of interleaved repeats), "
          f"{describe_machine(res['machine'])}")
    print()
    print(res["table"])
    print()
    print(f"benchmark wall time: {res['wall_s']:.0f} s")
    for p in res["profiles"]:
        print()
        print(p)
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
