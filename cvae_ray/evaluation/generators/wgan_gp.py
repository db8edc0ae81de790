"""Conditional WGAN-GP after Viñas et al. 2022 (rvinas/adversarial-gene-expression), in torch."""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from cvae_ray.config import FromDictMixin, check_positive_int, check_value
from cvae_ray.data.conditions import Vocabulary
from cvae_ray.errors import InvalidDataError
from cvae_ray.evaluation.generators import check_fit_inputs
from cvae_ray.metrics.registry import gamma


@dataclass(frozen=True)
class WganGpConfig(FromDictMixin):
    """Settings of the WGAN-GP baseline; defaults are Viñas et al.'s (``gtex_tcga_gan.py``).

    Attributes:
        hidden: Widths of the generator's and the critic's hidden ReLU layers.
        latent_dim: Size of the generator's noise input.
        lr: RMSprop learning rate of both networks.
        batch_size: Mini-batch size.
        critic_steps: Critic updates per generator update.
        gp_weight: Gradient-penalty weight.
        epochs: Maximum epochs (a time budget may stop earlier).
        eval_every: Validation gamma every this many epochs (checkpoint selection).
        device: torch device string.
    """

    hidden: tuple[int, ...] = (256, 256)
    latent_dim: int = 64
    lr: float = 5e-4
    batch_size: int = 32
    critic_steps: int = 5
    gp_weight: float = 10.0
    epochs: int = 2000
    eval_every: int = 5
    device: str = "cpu"

    def __post_init__(self) -> None:
        check_value(isinstance(self.hidden, tuple) and len(self.hidden) > 0
               and all(isinstance(h, int) and h > 0 for h in self.hidden),
               "hidden", self.hidden, "a non-empty tuple of positive integers")
        for name in ("latent_dim", "batch_size", "critic_steps", "epochs", "eval_every"):
            check_positive_int(name, getattr(self, name))
        check_value(isinstance(self.lr, (int, float)) and self.lr > 0, "lr", self.lr,
               "a positive number")
        check_value(isinstance(self.gp_weight, (int, float)) and self.gp_weight >= 0, "gp_weight",
               self.gp_weight, "a number >= 0")


class _Embedded(nn.Module):
    """An MLP whose input is a dense vector plus one embedding per condition column.

    Embedding sizes are floor(sqrt(vocabulary size)) + 1, as in Viñas et al.
    """

    def __init__(self, n_in: int, condition_sizes: list[int], hidden: tuple[int, ...],
                 n_out: int) -> None:
        super().__init__()
        self.embeddings = nn.ModuleList(
            nn.Embedding(size, math.isqrt(size) + 1) for size in condition_sizes)
        width = n_in + sum(math.isqrt(size) + 1 for size in condition_sizes)
        layers: list[nn.Module] = []
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, n_out))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        parts = [x] + [emb(codes[:, j]) for j, emb in enumerate(self.embeddings)]
        return self.net(torch.cat(parts, dim=1))


class WganGpGenerator:
    """Conditional WGAN-GP; keeps the generator checkpoint with the best validation gamma.

    Args:
        time_budget_s: Wall-clock budget of ``fit``; training stops after the
            first epoch that ends past it (then the best checkpoint so far is kept).
        **options: :class:`WganGpConfig` fields.
    """

    name = "wgan-gp"

    def __init__(self, *, time_budget_s: float | None = None, **options: Any) -> None:
        self.config = WganGpConfig.from_dict(options)
        self.time_budget_s = time_budget_s
        self.info: dict[str, Any] = {}
        self._vocab = Vocabulary({})
        self._generator: _Embedded | None = None

    def _gradient_penalty(self, critic: _Embedded, real: torch.Tensor, fake: torch.Tensor,
                          codes: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
        alpha = torch.rand(len(real), 1, generator=rng).to(real.device)
        mixed = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
        grads, = torch.autograd.grad(critic(mixed, codes).sum(), mixed, create_graph=True)
        return ((grads.norm(2, dim=1) - 1) ** 2).mean()

    def fit(self, x_train: np.ndarray, cond_train: pd.DataFrame, x_val: np.ndarray,
            cond_val: pd.DataFrame, seed: int) -> None:
        """Train; checkpoint selection on validation gamma only."""
        cfg = self.config
        x_train = check_fit_inputs(x_train, cond_train, "x_train")
        x_val = check_fit_inputs(x_val, cond_val, "x_val")
        self._vocab = Vocabulary.fit(cond_train)
        sizes = self._vocab.sizes
        device = torch.device(cfg.device)
        torch.manual_seed(int(seed))
        rng = torch.Generator().manual_seed(int(seed))
        gen = _Embedded(cfg.latent_dim, sizes, cfg.hidden, x_train.shape[1]).to(device)
        critic = _Embedded(x_train.shape[1], sizes, cfg.hidden, 1).to(device)
        opt_g = torch.optim.RMSprop(gen.parameters(), lr=cfg.lr)
        opt_c = torch.optim.RMSprop(critic.parameters(), lr=cfg.lr)
        xt = torch.from_numpy(x_train).to(device)
        ct = torch.from_numpy(self._vocab.encode(cond_train)).to(device)
        cv = torch.from_numpy(self._vocab.encode(cond_val))
        best_gamma, best_state, best_epoch, history = -np.inf, None, 0, []
        started, step, epoch = time.perf_counter(), 0, 0
        for epoch in range(1, cfg.epochs + 1):
            gen.train()
            critic.train()
            order = torch.randperm(len(xt), generator=rng).to(device)
            for start in range(0, len(xt), cfg.batch_size):
                rows = order[start:start + cfg.batch_size]
                real, codes = xt[rows], ct[rows]
                z = torch.randn(len(rows), cfg.latent_dim, generator=rng).to(device)
                fake = gen(z, codes).detach()
                loss_c = (critic(fake, codes).mean() - critic(real, codes).mean()
                          + cfg.gp_weight * self._gradient_penalty(critic, real, fake, codes,
                                                                   rng))
                opt_c.zero_grad()
                loss_c.backward()
                opt_c.step()
                step += 1
                # One generator update per `critic_steps` critic updates.
                if step % cfg.critic_steps == 0:
                    z = torch.randn(len(rows), cfg.latent_dim, generator=rng).to(device)
                    loss_g = -critic(gen(z, codes), codes).mean()
                    opt_g.zero_grad()
                    loss_g.backward()
                    opt_g.step()
            over = (self.time_budget_s is not None
                    and time.perf_counter() - started > self.time_budget_s)
            if epoch % cfg.eval_every == 0 or epoch == cfg.epochs or over:
                value = self._val_gamma(gen, cv, x_val, device)
                history.append({"epoch": epoch, "val_gamma": value})
                if value > best_gamma:
                    best_gamma, best_epoch = value, epoch
                    best_state = copy.deepcopy({k: v.detach().cpu()
                                                for k, v in gen.state_dict().items()})
            if over:
                break
        if best_state is not None:  # else every evaluation failed: keep the last weights
            gen.load_state_dict(best_state)
        self._generator = gen.cpu().eval()
        self.info = {"epochs_run": epoch, "max_epochs": cfg.epochs, "best_epoch": best_epoch,
                     "val_gamma": float(best_gamma), "cut_by_budget": epoch < cfg.epochs,
                     "seconds": round(time.perf_counter() - started, 2),
                     "config": dataclasses.asdict(cfg)}

    @torch.no_grad()
    def _val_gamma(self, gen: _Embedded, codes: torch.Tensor, x_val: np.ndarray,
                   device: torch.device) -> float:
        gen.eval()
        rng = torch.Generator().manual_seed(0)  # the same noise at every evaluation
        z = torch.randn(len(codes), self.config.latent_dim, generator=rng).to(device)
        synthetic = gen(z, codes.to(device)).cpu().numpy()
        gen.train()
        if not np.isfinite(synthetic).all():
            return -np.inf
        try:
            value = gamma(x_val, synthetic)
        except InvalidDataError:  # a collapsed generator (constant genes) scores worst
            return -np.inf
        return value if np.isfinite(value) else -np.inf

    @torch.no_grad()
    def sample(self, cond: pd.DataFrame, seed: int) -> np.ndarray:
        """One standardised synthetic row per condition row."""
        if self._generator is None:
            raise RuntimeError("fit the generator before sampling.")
        codes = torch.from_numpy(self._vocab.encode(cond))
        rng = torch.Generator().manual_seed(int(seed))
        z = torch.randn(len(codes), self.config.latent_dim, generator=rng)
        return self._generator(z, codes).float().numpy()
