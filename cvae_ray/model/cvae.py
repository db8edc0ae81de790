"""The conditional VAE, in plain torch.

Conditions are categorical columns; each is one-hot encoded and the one-hot
vectors are concatenated onto the encoder input and onto the latent code. The
decoder is Gaussian: a mean per gene plus, by default, a learned per-gene
log-variance, so that sampled data has the spread of real data instead of the
over-smooth decoder means the reference method returned. Latent codes are drawn
from a Gaussian per condition combination fitted after training
(:mod:`cvae_ray.model.latent_prior`) when one is set, else from N(0, I).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from cvae_ray.config import ModelConfig, SampleConfig
from cvae_ray.model.draws import request_draws
from cvae_ray.model.latent_prior import LatentPrior
from cvae_ray.model.spread import SpreadCorrection

DEFAULT_SAMPLING = SampleConfig()
#: Rows decoded per pass when sampling on CPU: large passes overflow the CPU caches
#: (one thread, 977 genes: 10,000 samples took 0.19 s in 1,024-row passes against
#: 0.25 s in one pass); a row's values do not depend on the other rows of its pass.
SAMPLE_CHUNK = 1024


@dataclass
class LossOutput:
    """One loss evaluation, averaged over the samples of the batch.

    Attributes:
        loss: What the optimiser minimises: ``reconstruction + kl_weight * kl``.
        reconstruction: Negative log-likelihood (or summed squared error) per sample.
        kl: KL divergence of the posterior from N(0, I) per sample.
    """

    loss: torch.Tensor
    reconstruction: torch.Tensor
    kl: torch.Tensor


def cpu_state(model: nn.Module) -> dict[str, Any]:
    """A detached CPU copy of a state_dict: tensors, and the latent prior's extra state."""
    return {k: v.detach().cpu().clone() if isinstance(v, torch.Tensor) else copy.deepcopy(v)
            for k, v in model.state_dict().items()}


def _norm_layer(kind: str, width: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm1d(width)
    if kind == "layer":
        return nn.LayerNorm(width)
    return nn.Identity()


def _mlp(sizes: Sequence[int], config: ModelConfig) -> nn.Sequential:
    layers: list[nn.Module] = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(n_in, n_out), _norm_layer(config.norm, n_out), nn.ReLU()]
        if config.dropout > 0:
            layers.append(nn.Dropout(config.dropout))
    return nn.Sequential(*layers)


class CVAE(nn.Module):
    """Conditional VAE over standardised log-expression.

    Args:
        n_genes: Number of genes (input and output width).
        condition_sizes: Number of values of each condition column, in column order.
        config: Architecture settings.
    """

    def __init__(self, n_genes: int, condition_sizes: Sequence[int], config: ModelConfig) -> None:
        super().__init__()
        self.n_genes = int(n_genes)
        self.condition_sizes = tuple(int(s) for s in condition_sizes)
        self.config = config
        n_cond = sum(self.condition_sizes)
        hidden = list(config.hidden)
        self.encoder = _mlp([n_genes + n_cond, *hidden], config)
        self.to_mu = nn.Linear(hidden[-1], config.latent_dim)
        self.to_log_var = nn.Linear(hidden[-1], config.latent_dim)
        self.decoder = _mlp([config.latent_dim + n_cond, *reversed(hidden)], config)
        self.to_mean = nn.Linear(hidden[0], n_genes)
        # One log-variance per gene: enough to restore per-gene spread while the
        # latent code carries the gene-gene covariance (a factor-analysis view).
        self.gene_log_var = nn.Parameter(torch.zeros(n_genes),
                                         requires_grad=config.likelihood == "gaussian")
        # Not a buffer: it is refitted on rank 0 only, and DDP would broadcast buffers.
        # It travels in the state_dict as extra state (plain tensors).
        self.latent_prior: LatentPrior | None = None
        # Per-gene variance the decoder noise lacks, fitted after training
        # (:mod:`cvae_ray.model.noise_gap`); same reasons for not being a buffer.
        self.noise_gap: torch.Tensor | None = None
        # Per-combination spread correction (:mod:`cvae_ray.model.spread`), fitted
        # after training when the sampling settings are chosen.
        self.spread: SpreadCorrection | None = None
        # Fixed per-value additive output effects, ``(sum(condition_sizes), n_genes)``:
        # released by the Gaussian mechanism in DP mode (:mod:`cvae_ray.model.private_means`),
        # not trained, so not a parameter; ``None`` for a model trained without DP.
        self.condition_offset: torch.Tensor | None = None

    def get_extra_state(self) -> dict[str, Any]:
        """The fitted latent prior, noise gap, spread correction and condition offset (empty
        when none is set)."""
        state = self.latent_prior.to_state() if self.latent_prior is not None else {}
        # On CPU, so a bundle saved from a GPU run loads anywhere.
        if self.noise_gap is not None:
            state["noise_gap"] = self.noise_gap.detach().cpu()
        if self.condition_offset is not None:
            state["condition_offset"] = self.condition_offset.detach().cpu()
        if self.spread is not None:
            state.update(self.spread.to_state())
        return state

    def set_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`get_extra_state` saved (older bundles lack the gap, spread or
        offset)."""
        self.latent_prior = LatentPrior.from_state(state) if "codes" in state else None
        gap = state.get("noise_gap")
        self.noise_gap = gap.float() if gap is not None else None
        offset = state.get("condition_offset")
        self.condition_offset = offset.float() if offset is not None else None
        self.spread = SpreadCorrection.from_state(state)

    def one_hot(self, codes: torch.Tensor) -> torch.Tensor:
        """Concatenate the one-hot encodings of integer condition codes.

        Args:
            codes: ``(batch, n_conditions)`` integer codes.

        Returns:
            ``(batch, sum(condition_sizes))`` float tensor.
        """
        parts = [F.one_hot(codes[:, i].long(), size).to(self.gene_log_var.dtype)
                 for i, size in enumerate(self.condition_sizes)]
        return torch.cat(parts, dim=1)

    def encode(self, x: torch.Tensor, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and log-variance of the latent code.

        Args:
            x: ``(batch, n_genes)`` standardised expression.
            codes: ``(batch, n_conditions)`` integer condition codes.

        Returns:
            ``(mu, log_var)``, each ``(batch, latent_dim)``.
        """
        h = self.encoder(torch.cat([x, self.one_hot(codes)], dim=1))
        return self.to_mu(h), self.to_log_var(h)

    def decode(self, z: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Decoder mean for latent codes under the given conditions.

        Args:
            z: ``(batch, latent_dim)`` latent codes.
            codes: ``(batch, n_conditions)`` integer condition codes.

        Returns:
            ``(batch, n_genes)`` mean expression in standardised space.
        """
        one_hot = self.one_hot(codes)
        mean = self.to_mean(self.decoder(torch.cat([z, one_hot], dim=1)))
        if self.condition_offset is not None:
            mean = mean + one_hot @ self.condition_offset.to(mean.device)
        return mean

    def decoder_log_var(self) -> torch.Tensor:
        """Per-gene decoder log-variance (zeros, i.e. unit variance, for ``mse``)."""
        return self.gene_log_var.clamp(min=self.config.min_log_var)

    def batch_log_var(self, x: torch.Tensor) -> torch.Tensor:
        """The decoder log-variance used in the loss of batch ``x`` (broadcasts over its rows).

        A hook: the DP-SGD model (:class:`cvae_ray.model.private.PrivateCVAE`) returns it
        per sample, which per-sample gradient clipping needs.
        """
        return self.decoder_log_var()

    def loss(self, x: torch.Tensor, codes: torch.Tensor, kl_weight: float = 1.0) -> LossOutput:
        """Negative ELBO of a batch.

        Args:
            x: ``(batch, n_genes)`` standardised expression.
            codes: ``(batch, n_conditions)`` integer condition codes.
            kl_weight: Weight of the KL term (KL warm-up / beta).

        Returns:
            The loss and its two parts, each averaged over the batch.
        """
        mu, log_var = self.encode(x, codes)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * log_var) if self.training else mu
        mean = self.decode(z, codes)
        if self.config.likelihood == "gaussian":
            gene_lv = self.batch_log_var(x)
            nll = 0.5 * (((x - mean) ** 2) * torch.exp(-gene_lv) + gene_lv + math.log(2 * math.pi))
        else:
            nll = (x - mean) ** 2
        reconstruction = nll.sum(dim=1).mean()
        kl = (-0.5 * (1 + log_var - mu ** 2 - log_var.exp()).sum(dim=1)).mean()
        return LossOutput(loss=reconstruction + kl_weight * kl, reconstruction=reconstruction, kl=kl)

    def forward(self, x: torch.Tensor, codes: torch.Tensor, kl_weight: float = 1.0) -> LossOutput:
        """Same as :meth:`loss`; ``forward`` so that DistributedDataParallel can wrap it."""
        return self.loss(x, codes, kl_weight)

    @torch.no_grad()
    def draw(self, codes: torch.Tensor, latent_noise: torch.Tensor,
             gene_noise: torch.Tensor | None = None,
             sample: SampleConfig = DEFAULT_SAMPLING) -> torch.Tensor:
        """Samples from given standard-normal draws (the one place that turns draws into data).

        Args:
            codes: ``(n, n_conditions)`` integer condition codes, one row per sample.
            latent_noise: ``(n, latent_dim)`` standard-normal draws for the latent codes.
            gene_noise: ``(n, n_genes)`` standard-normal draws for the decoder noise;
                ``None`` returns decoder means.
            sample: Sampling settings used here: ``latent`` (map ``latent_noise``
                through the fitted latent prior when one is set, else N(0, I) as the
                VAE was trained towards), ``temperature`` (multiplies the noise's
                standard deviation), ``noise_calibration`` (share of the fitted
                per-gene variance gap added to the noise variance) and
                ``spread_correction`` and ``mean_correction`` (exponent of the fitted
                per-combination sd ratios, share of the mean shifts; applied to noisy
                samples only).

        Returns:
            ``(n, n_genes)`` samples in standardised space, on the model's device.
        """
        device = self.gene_log_var.device
        codes = codes.to(device)
        z = latent_noise.to(device)
        if sample.fitted_prior and self.latent_prior is not None:
            z = self.latent_prior.transform(z, codes)
        scale = (self.noise_scale(sample) if gene_noise is not None and sample.temperature > 0
                 else None)
        spread = (self.spread.index(codes) if scale is not None and self.spread is not None
                  and sample.spread_correction > 0 else None)

        def rows_out(rows: slice) -> torch.Tensor:
            part = self.decode(z[rows], codes[rows])
            if scale is not None:
                part.addcmul_(gene_noise[rows].to(device), scale)
            if spread is not None:
                self.spread.apply(part, spread[rows], sample)
            return part

        n = z.shape[0]
        if device.type != "cpu" or n <= SAMPLE_CHUNK:
            out = rows_out(slice(None))
        else:
            # On CPU, decode in cache-sized chunks (rows are independent; same values).
            out = torch.empty(n, self.n_genes, device=device)
            for start in range(0, n, SAMPLE_CHUNK):
                rows = slice(start, start + SAMPLE_CHUNK)
                out[rows] = rows_out(rows)
        return out

    @torch.no_grad()
    def noise_scale(self, sample: SampleConfig = DEFAULT_SAMPLING) -> torch.Tensor:
        """Per-gene standard deviation of the decoder noise added when sampling."""
        variance = torch.exp(self.decoder_log_var())
        if self.noise_gap is not None and sample.noise_calibration > 0:
            variance = variance + sample.noise_calibration * self.noise_gap.to(variance)
        return variance.sqrt() * sample.temperature

    @torch.no_grad()
    def sample(self, codes: torch.Tensor, generator: torch.Generator | None = None,
               sample: SampleConfig = DEFAULT_SAMPLING) -> torch.Tensor:
        """Draw synthetic samples for the given condition codes.

        The draws come from :func:`cvae_ray.model.draws.request_draws` (latent codes first,
        then decoder noise, from ``generator``), so a seeded generator gives the same
        samples on every call.

        Args:
            codes: ``(n, n_conditions)`` integer condition codes, one row per sample.
            generator: Random source (CPU generator); ``None`` uses torch's global one.
            sample: Sampling settings (noise, temperature, latent prior, centring,
                noise calibration, spread correction).

        Returns:
            ``(n, n_genes)`` samples in standardised space, on the model's device.
        """
        latent_noise, gene_noise = request_draws(
            codes.cpu().numpy(), self.config.latent_dim, self.n_genes, generator, sample)
        return self.draw(codes, latent_noise, gene_noise, sample)
