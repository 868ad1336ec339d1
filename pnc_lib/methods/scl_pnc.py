"""SCL-PNC: expandable backbone + adapt-layer + growing simplex-ETF classifier + distillation
between expansion modules (Zhang, Lin et al., 2025; formulation in DESIGN.md section 3).

Model, for an image batch ``x`` (B, C, H, W) at task t::

    z   = base(x)                                   (frozen after task 0)
    f_k = module_k(z),  k = 0..t                    (B, d) each; modules < t frozen
    g   = mean_k f_k  (parallel)  |  [f_0..f_t] (serial)
    e   = adapt(g)                                  (B, p)   residual MLP ("embed")
    h   = normalize(BN(e))                          (B, p)   ("normalized_features")
    logits = h @ M[:, :K]                           (B, K)   M: fixed simplex ETF (p, K)

Loss at task t (over the new task's data plus the exemplar memory)::

    L = L_DR(h, y; M) + [t >= 1] kd_weight * L_KD(f_t, f_{t-1})
    L_DR = 1/2 mean_i w_{y_i}^2 (m_{y_i}^T h_i - 1)^2            (loss "dr")
    L_CE = mean_i w_{y_i}^2 CE(s * h_i @ M, y_i), s = ``CE_SCALE`` = 10   (loss "ce")
    (w = 1, or with ``rebalance`` w_c^2 = (B / n_present) / count_c, as in L_DR)
    L_KD = 1/2 mean_i (cos(f_t(z_i), f_{t-1}(z_i)) - 1)^2

The teacher ``f_{t-1}`` is the frozen previous module evaluated on the same batch (no grad).
With ``head: linear`` the ETF is replaced by a growing linear classifier on ``e`` trained with
cross-entropy (DR needs fixed prototypes).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..etf import ETFHead
from ..losses import class_balance_weights, dot_regression_loss, module_distillation_loss
from ..models import GrowingLinearHead
from ..models.adapt_layer import AdaptLayer
from ..models.expandable import ExpandableBackbone
from .base import NetworkMethod
from .baselines import backbone_parts


class SCLPNC(NetworkMethod):
    """SCL-PNC on the shared engine (data policy "memory": herding exemplars under the budget).

    Config fields used: ``expansion``, ``adapt_layer``/``adapt_hidden``/``adapt_out``,
    ``head`` (etf | linear), ``etf_mode``, ``loss`` (dr | ce), ``rebalance``, ``kd_weight``,
    ``kd_epochs`` (KD only in the first ``kd_epochs`` epochs of a task; None = all).
    """

    name = "scl_pnc"
    data_policy = "memory"
    #: temperature of the cross-entropy on ETF cosine logits (cosines lie in [-1, 1]; without a
    #: scale the softmax stays nearly uniform and CE cannot make classes confident)
    CE_SCALE = 10.0

    def __init__(self, cfg, scenario, device):
        super().__init__(cfg, scenario, device)
        parts = backbone_parts(cfg, scenario)
        backbone = ExpandableBackbone(parts, expansion=cfg.expansion)
        total = scenario.num_classes
        if cfg.adapt_layer:
            adapt = AdaptLayer(parts.out_dim, cfg.adapt_hidden, cfg.adapt_out)
            dim = cfg.adapt_out
        else:
            if cfg.expansion == "serial":
                raise ValueError("expansion='serial' needs the adapt-layer (adapt_layer: true): it maps the "
                                 "growing concatenated feature to a fixed size for the classifier")
            adapt = nn.Identity()
            dim = parts.out_dim
        if cfg.head == "etf" and dim < total:
            what = "adapt_out" if cfg.adapt_layer else "module_width (or enable the adapt-layer)"
            raise ValueError(
                f"the simplex ETF needs feature dim >= number of classes, but dim={dim} < {total} classes "
                f"of {scenario.dataset}; raise {what} to at least {total}")
        # a generator of its own for the ETF draws, so the shuffling order matches the baselines'
        self.etf_generator = torch.Generator().manual_seed(cfg.seed + 7919)
        k0 = scenario.seen_classes(0)
        if cfg.head == "etf":
            head = ETFHead(dim, k0, mode=cfg.etf_mode, total_classes=total if cfg.etf_mode == "fixed" else None,
                           generator=self.etf_generator)
        else:
            head = GrowingLinearHead(dim)
        self.model = nn.ModuleDict({"backbone": backbone, "adapt": adapt, "head": head})
        self.model.to(self.device)
        self.last_shift = 0.0

    # ------------------------------------------------------------------ structure
    @property
    def backbone(self) -> ExpandableBackbone:
        return self.model["backbone"]

    def begin_task(self, task):
        """Add this task's module (t=0: the first; t>=1: a copy of the last, base and old modules
        frozen), widen the adapt-layer input (serial), grow the head to the seen classes."""
        super().begin_task(task)
        bb = self.backbone
        while bb.num_modules < task + 1:
            bb.add_module_for_task()
        if isinstance(self.model["adapt"], AdaptLayer):
            self.model["adapt"].grow_input(bb.out_dim)
        head = self.model["head"]
        self.last_shift = 0.0
        if isinstance(head, ETFHead):
            if self.seen > head.num_classes:
                self.last_shift = float(head.grow(self.seen))
        else:
            head.grow(self.seen)
        self.model.to(self.device)

    def base_network(self):
        return self.backbone.base

    def trainable_parameters(self):
        return [p for p in self.model.parameters() if p.requires_grad]

    # ------------------------------------------------------------------ forward
    def _forward(self, x):
        """-> (module outputs list of (B, d), adapt output (B, p))."""
        outs = self.backbone.module_outputs(x)
        return outs, self.model["adapt"](self.backbone.combine(outs))

    def embed(self, x):
        """The adapt-layer output ``e`` (B, p), before the head's BatchNorm."""
        return self._forward(x)[1]

    def _normalize(self, e):
        head = self.model["head"]
        return head.normalized_features(e) if isinstance(head, ETFHead) else F.normalize(e, dim=1)

    def normalized_features(self, x):
        """``h = normalize(BN(e))`` (B, p): the features the ETF compares (linear head: normalize(e))."""
        return self._normalize(self.embed(x))

    def logits(self, x):
        return self.model["head"](self.embed(x))

    @property
    def etf(self):
        """The ETF columns in use (p, K), or None with a linear head."""
        head = self.model["head"]
        return head.etf if isinstance(head, ETFHead) else None

    # ------------------------------------------------------------------ training
    def kd_active(self, epoch: int) -> bool:
        cfg = self.cfg
        return (self.task >= 1 and cfg.kd_weight > 0
                and (cfg.kd_epochs is None or epoch < cfg.kd_epochs))

    def _cross_entropy(self, logits, y):
        """Mean CE; with ``rebalance`` each sample weighted by ``w_{y_i}^2`` (every class present
        in the batch carries the same total weight, see :func:`class_balance_weights`)."""
        if not self.cfg.rebalance:
            return F.cross_entropy(logits, y)
        w = class_balance_weights(y).to(logits.dtype)
        return (w * F.cross_entropy(logits, y, reduction="none")).mean()

    def loss(self, x, y, epoch):
        cfg = self.cfg
        outs, e = self._forward(x)
        head = self.model["head"]
        if isinstance(head, ETFHead):
            h = head.normalized_features(e)
            cos = h @ head.etf
            if cfg.loss == "dr":
                main = dot_regression_loss(h, y, head.etf, rebalance=cfg.rebalance)
            else:
                main = self._cross_entropy(self.CE_SCALE * cos, y)
            logits = cos
        else:
            logits = head(e)[:, :self.seen]
            main = self._cross_entropy(logits, y)
        stats = {"main": float(main.detach()), "acc": float((logits.argmax(1) == y).float().mean())}
        loss = main
        if self.kd_active(epoch):
            kd = module_distillation_loss(outs[-1], outs[-2].detach())
            loss = loss + cfg.kd_weight * kd
            stats["kd"] = float(kd.detach())
        return loss, stats

    def end_task(self, task):
        counts = self.backbone.parameter_counts()
        total = sum(p.numel() for p in self.model.parameters())
        trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        return {"parameters": total, "trainable_parameters": trainable,
                "backbone_parameters": counts["total"], "module_parameters": counts["per_module"],
                "num_modules": self.backbone.num_modules, "feature_dim": self.backbone.out_dim,
                "etf_shift": self.last_shift}

    # ------------------------------------------------------------------ state
    def state_dict(self):
        state = super().state_dict()
        state["etf_generator"] = self.etf_generator.get_state()
        state["last_shift"] = self.last_shift
        return state

    def load_state_dict(self, state):
        super().load_state_dict(state)
        if "etf_generator" in state:
            self.etf_generator.set_state(state["etf_generator"])
        self.last_shift = state.get("last_shift", 0.0)
