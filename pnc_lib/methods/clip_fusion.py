"""CLIP parameter fusion: frozen CLIP + a linear adapter trained per task + fusion of the
adapter's old and new weights (RAPF, Huang et al. ECCV 2024; Adaptive Weighted Parameter
Fusion, Guo et al. arXiv 2503.19503).

Methods (config ``method``):

* ``clip_zeroshot`` - no adapter: ``y = argmax_{c <= seen} cos(f, t_c)``.
* ``clip_adapter``  - the adapter fine-tuned at every task, no fusion (``W = W_new``).
* ``clip_rapf``     - ``W = rapf_fuse(W_old, W_new, fusion_bias)`` after tasks >= 1.
* ``clip_awpf``     - ``W = stacked_fuse(W_old, W_new, alpha, fusion_energy)``, ``alpha`` fixed
  (``fusion_alpha``) or chosen by ``balance_factor_search`` (LDA - lambda * MMD^2).

Every image is encoded once (see :mod:`pnc_lib.clip.cache`); training runs on the cached
features ``f`` (N, d). Logits: ``exp(log s) * cos(W f, t_c)`` over the seen classes, with
``t_c`` the prompt-ensemble text features. Old classes are replayed from Gaussians of their
raw features (no image memory: ``data_policy = "current"``); hard old/new pairs get RAPF's
hinge loss. With ``dataset: features`` the dataset's feature vectors are used as the image
features directly, and the text features come from the file's ``text_features`` entry
(K, d; original label order) when it has one.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F

from .. import distributed, fusion
from ..clip.adapter import (class_gaussians, clip_logits, hard_pair_loss, hard_pairs, make_adapter,
                            sample_pseudo_features)
from .base import Method, TaskContext
from .training import EpochTrainer, mean_stats

RANDOM_NOTE = "numbers from randomly initialised CLIP weights"


class ClipMethod(Method):
    """Zero-shot CLIP, and the common part of the adapter methods (``fusion``: None, "rapf", "awpf")."""

    name = "clip_zeroshot"
    data_policy = "current"
    trains_adapter = False
    fusion: Optional[str] = None

    def __init__(self, cfg, scenario, device):
        super().__init__(cfg, scenario, device)
        self.bundle = None
        self.feats: dict = {}            # split -> (N, d) raw features, CPU float32
        self.text: Optional[torch.Tensor] = None   # (K, d) unit text features, new-label order, on device
        self.logit_scale = math.log(100.0)
        self.weights_label, self.is_random, self.identity = "", False, ""
        self.adapter = None
        self.stats: dict = {}            # class -> (mu (d,), Sigma (d, d)) of raw features
        self._chol: dict = {}
        self.W_old: Optional[torch.Tensor] = None
        self.trainer: Optional[EpochTrainer] = None
        self._trainer_state = None
        self._current = None             # (X_new, y_new) raw features of the task being trained
        self._pairs: list = []

    # ------------------------------------------------------------------ set-up
    def _ensure_ready(self) -> None:
        """Load CLIP, the cached image features of both splits and the text features (once)."""
        if self.text is not None:
            return
        cfg, s = self.cfg, self.scenario
        if cfg.dataset == "features":
            self._setup_from_feature_file()
        else:
            from ..clip.cache import cached_features

            bundle = self._load_bundle()
            for split in ("train", "test"):
                parts = {"dataset": cfg.dataset, "dataset_kwargs": cfg.dataset_kwargs, "split": split}
                self.feats[split] = cached_features(bundle, s.split(split), parts, batch_size=cfg.eval_batch_size,
                                                    device=self.device, progress=cfg.progress,
                                                    cache_dir=cfg.cache_dir, num_workers=cfg.num_workers)
            self._set_text(bundle)
        if self.trains_adapter:
            self.adapter = make_adapter(self.text.shape[1]).to(self.device)

    def dry_run(self) -> None:
        """Config validation: load the CLIP weights now, so missing weights fail before any run."""
        if self.cfg.dataset != "features":
            self._load_bundle()

    def _load_bundle(self):
        from ..clip.model import load_clip

        cfg = self.cfg
        if self.bundle is None:
            size = cfg.preset if cfg.preset in ("smoke", "quick") else "quick"
            with distributed.main_first():   # rank 0 downloads or pretrains the weights, once
                self.bundle = load_clip(cfg.clip_model, cfg.clip_pretrained, cfg.clip_checkpoint,
                                        device=self.device, pretrain_size=size, cache_dir=cfg.cache_dir,
                                        progress=cfg.progress and distributed.is_main())
            b = self.bundle
            self.weights_label, self.is_random, self.identity = b.weights, b.is_random, b.identity
        return self.bundle

    def _set_text(self, bundle) -> None:
        from ..clip.model import text_features

        self.text = text_features(bundle, self.scenario.class_names, self.cfg.templates).to(self.device)
        self.logit_scale = bundle.logit_scale

    def _setup_from_feature_file(self) -> None:
        from ..data.datasets import default_root

        cfg, s = self.cfg, self.scenario
        for split in ("train", "test"):
            x = s.split(split).x
            if x is None or x.dim() != 2:
                raise ValueError("dataset 'features' must hold (N, d) feature vectors for the CLIP methods")
            self.feats[split] = x.float().cpu()
        path = Path(cfg.dataset_kwargs.get("path") or default_root(cfg.root) / "features.pt")
        meta = torch.load(path, map_location="cpu", weights_only=False)
        if meta.get("text_features") is not None:
            T = torch.as_tensor(meta["text_features"]).float()[torch.tensor(s.class_order)]
            self.text = F.normalize(T, dim=-1).to(self.device)
            self.logit_scale = float(meta.get("logit_scale", math.log(100.0)))
            self.weights_label = str(meta.get("clip_weights", "precomputed features"))
            self.is_random = bool(meta.get("random_weights", False))
            self.identity = f"features:{path.name}"
        else:
            self._set_text(self._load_bundle())
        if self.text.shape[1] != self.feats["train"].shape[1]:
            raise ValueError(f"text features have {self.text.shape[1]} dims but the image features "
                             f"{self.feats['train'].shape[1]}")

    # ------------------------------------------------------------------ the adapter
    def _adapt(self, x: torch.Tensor) -> torch.Tensor:
        return self.adapter(x) if self.adapter is not None else x

    @torch.no_grad()
    def _weight(self) -> torch.Tensor:
        return self.adapter.weight.detach().clone()

    def train_task(self, ctx: TaskContext) -> dict:
        self._ensure_ready()
        if not self.trains_adapter:
            return {"epochs": 0}
        cfg, s, dev, t = self.cfg, self.scenario, self.device, ctx.task
        if ctx.start_epoch == 0 or self.W_old is None:
            self.W_old = self._weight()
        idx = torch.as_tensor(ctx.indices, dtype=torch.long)
        X_new, y_new = self.feats["train"][idx], s.train.y[idx]
        self._current = (X_new, y_new)
        old_classes = range(0, s.bounds[t])
        self._pairs = hard_pairs(self.text, old_classes, ctx.new_classes, cfg.hard_pair_threshold) \
            if t >= 1 and cfg.hard_pair_threshold is not None else []
        text_seen = self.text[:ctx.seen_classes]
        self.trainer = EpochTrainer(self.adapter.parameters(), task=t, epochs=cfg.epochs, lr=cfg.lr,
                                    optimizer="adam", weight_decay=cfg.weight_decay or 0.0,
                                    milestones=cfg.lr_milestones or [], gamma=cfg.lr_gamma or 0.1,
                                    grad_clip=cfg.grad_clip or 0.0)
        if ctx.start_epoch > 0 and self._trainer_state is not None:
            self.trainer.load_state_dict(self._trainer_state)
        self._trainer_state = None

        def batch_loss(xb, yb, pb):
            a = self.adapter(xb)
            logits = clip_logits(a, text_seen, self.logit_scale)
            ce = F.cross_entropy(logits, yb)
            loss = ce
            stats = {"ce": float(ce.detach()), "acc": float((logits.argmax(1) == yb).float().mean())}
            if self._pairs and cfg.hard_pair_weight:
                hp = hard_pair_loss(a[pb], yb[pb], text_seen, self._pairs)
                loss = loss + cfg.hard_pair_weight * hp
                stats["hard_pair"] = float(hp.detach())
            return loss, stats

        # under torchrun: DistributedDataParallel around the adapter's loss, and each rank takes
        # its share of every global batch of batch_size (the same seeded shuffle on all ranks)
        loss_fn = distributed.wrap_loss(self.adapter, batch_loss)
        d = distributed.context()

        def epoch_fn(epoch):
            # fresh pseudo-features of every old class each epoch, mixed into the batches
            Xp, yp = sample_pseudo_features(self.stats, old_classes, cfg.pseudo_per_class or 0,
                                            self.generator, self._chol)
            X = torch.cat([X_new, Xp.to(X_new)]) if len(yp) else X_new
            y = torch.cat([y_new, yp]) if len(yp) else y_new
            pseudo = torch.arange(len(y)) >= len(y_new)
            perm = torch.randperm(len(y), generator=self.generator)
            rows = []
            for start in range(0, len(y), cfg.batch_size):
                b = distributed.batch_share(perm[start:start + cfg.batch_size], d.rank, d.world_size)
                xb, yb, pb = X[b].to(dev), y[b].to(dev), pseudo[b].to(dev)
                loss, stats = loss_fn(xb, yb, pb)
                stats["loss"] = self.trainer.step(loss)
                rows.append(stats)
            return mean_stats(rows)

        history = self.trainer.run(epoch_fn, ctx, desc=f"task {t}")
        self.trainer = None
        return {"final_loss": history[-1].get("loss") if history else None, "epochs": len(history)}

    def end_task(self, task: int) -> dict:
        """Fuse (tasks >= 1), store the new classes' Gaussians, and report what happened."""
        info = {"random_weights": self.is_random, "weight_change": 0.0, "update_norm": 0.0,
                "hard_pairs": None, "fusion_rank": None}
        if self.fusion == "awpf":
            info.update({k: None for k in ("alpha", "alpha_score", "alpha_mmd", "alpha_lda", "alpha_grid",
                                           "alpha_grid_scores", "alpha_grid_mmd", "alpha_grid_lda")})
        if not self.trains_adapter:
            return info
        cfg, s = self.cfg, self.scenario
        W_old, W_new = self.W_old, self._weight()
        X_new, y_new = self._current
        W = W_new
        if task >= 1 and self.fusion == "rapf":
            W = fusion.rapf_fuse(W_old, W_new, cfg.fusion_bias)
            info["fusion_rank"] = int(W_old.shape[0])   # RAPF mixes in the full basis of svd(W_old)
        elif task >= 1 and self.fusion == "awpf":
            W, search = self._awpf(task, W_old, W_new, X_new, y_new)
            info.update(search)
        with torch.no_grad():
            self.adapter.weight.copy_(W.to(self.adapter.weight))
        distributed.broadcast_module(self.adapter)   # rank 0's fused weights on every rank
        info["hard_pairs"] = len(self._pairs)
        info["update_norm"] = float((W_new - W_old).norm())   # ||W_new - W_old||_F, before fusion
        info["weight_change"] = float((W - W_old).norm())     # ||W - W_old||_F, after fusion
        self.stats.update(class_gaussians(X_new, y_new, s.task_classes(task)))
        self.W_old, self._current, self._pairs = None, None, []
        return info

    def _awpf(self, task, W_old, W_new, X_new, y_new):
        """alpha_t = argmax_alpha LDA(W(alpha); old pseudo + new) - lambda * MMD^2(W(alpha) x_old, W_old x_old),
        with old = the previous task's classes (the adjacent tasks), sampled from their Gaussians, as many
        per class as the new task has images per class."""
        cfg, s = self.cfg, self.scenario
        prev = s.task_classes(task - 1)
        # as many pseudo-features per old class as the new task has images per class (balanced LDA)
        n = max(int(cfg.pseudo_per_class or 0), len(y_new) // max(len(s.task_classes(task)), 1), 2)
        Xo, yo = sample_pseudo_features(self.stats, prev, n, self.generator, self._chol)
        grid = [float(cfg.fusion_alpha)] if cfg.fusion_alpha is not None else \
            torch.linspace(0.0, 1.0, max(int(cfg.alpha_grid), 1)).tolist()
        dev = self.device
        res = fusion.balance_factor_search(W_old, W_new, Xo.to(dev), yo, X_new.to(dev), y_new,
                                           lam=cfg.fusion_lambda, grid=grid, energy=cfg.fusion_energy,
                                           generator=self.generator)
        i = res["grid"].index(res["alpha"])
        _, finfo = fusion.stacked_fuse(W_old, W_new, res["alpha"], energy=cfg.fusion_energy, return_info=True)
        return res["W"], {"alpha": res["alpha"], "alpha_score": res["scores"][i], "alpha_mmd": res["mmd"][i],
                          "alpha_lda": res["lda"][i], "alpha_grid": res["grid"], "alpha_grid_scores": res["scores"],
                          "alpha_grid_mmd": res["mmd"], "alpha_grid_lda": res["lda"],
                          "fusion_rank": int(finfo["rank"])}

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def _adapted(self, split, indices) -> torch.Tensor:
        self._ensure_ready()
        X = self.feats[split][torch.as_tensor(indices, dtype=torch.long)]
        out = []
        for start in range(0, len(X), self.cfg.eval_batch_size):
            out.append(F.normalize(self._adapt(X[start:start + self.cfg.eval_batch_size].to(self.device)), dim=-1))
        return torch.cat(out) if out else torch.zeros(0, X.shape[1], device=self.device)

    @torch.no_grad()
    def predict(self, split, indices):
        """``argmax_{c < seen} cos(normalize(W f), t_c)``."""
        z = self._adapted(split, indices)
        return (z @ self.text[:self.seen].T).argmax(1).cpu()

    @torch.no_grad()
    def features(self, split, indices):
        """Adapted, unit-norm features ``normalize(W f)`` (n, d)."""
        return self._adapted(split, indices).float().cpu()

    # ------------------------------------------------------------------ state
    def state_dict(self):
        state = super().state_dict()
        classes = sorted(self.stats)
        state.update({
            "adapter": self._weight().cpu() if self.adapter is not None else None,
            "W_old": self.W_old.cpu() if self.W_old is not None else None,
            "stat_classes": classes,
            "stat_means": torch.stack([self.stats[c][0] for c in classes]) if classes else None,
            "stat_covs": torch.stack([self.stats[c][1] for c in classes]) if classes else None,
            "trainer": self.trainer.state_dict() if self.trainer is not None else None,
        })
        return state

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self._ensure_ready()
        if self.adapter is not None and state.get("adapter") is not None:
            with torch.no_grad():
                self.adapter.weight.copy_(state["adapter"].to(self.adapter.weight))
        self.W_old = state["W_old"].to(self.device) if state.get("W_old") is not None else None
        classes = state.get("stat_classes") or []
        self.stats = {c: (state["stat_means"][i], state["stat_covs"][i]) for i, c in enumerate(classes)}
        self._chol = {}
        self._trainer_state = state.get("trainer")

    def run_info(self) -> dict:
        self._ensure_ready()
        info = {"clip_model": self.cfg.clip_model if self.cfg.dataset != "features" or self.bundle else None,
                "clip_weights": self.weights_label, "random_weights": self.is_random,
                "clip_identity": self.identity, "feature_dim": int(self.text.shape[1]),
                "logit_scale": float(self.logit_scale)}
        if self.is_random:
            info["note"] = RANDOM_NOTE
        return info


class ClipAdapter(ClipMethod):
    name, trains_adapter, fusion = "clip_adapter", True, None


class ClipRAPF(ClipMethod):
    name, trains_adapter, fusion = "clip_rapf", True, "rapf"


class ClipAWPF(ClipMethod):
    name, trains_adapter, fusion = "clip_awpf", True, "awpf"


CLIP_METHODS = {"clip_zeroshot": ClipMethod, "clip_adapter": ClipAdapter, "clip_rapf": ClipRAPF,
                "clip_awpf": ClipAWPF}
