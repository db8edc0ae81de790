"""The CVAE's sampling path on CPU: the eval-mode decoder folded into numpy.

At n = 1 a torch decoder pass costs far more than its arithmetic: each of its ~15
small ops (one-hot, concatenation, three linear layers, two BatchNorms, ReLUs, the
latent prior's product, the noise scale's exp and sqrt) pays torch's dispatch
overhead, and torch's single-row linear kernel is slow on CPU (977 x 512 matrix times
one vector: 80 us in torch against 44 us in numpy's BLAS on this project's 2-CPU
machine, one thread each). In eval mode the decoder is a fixed function, so it can
be folded once:

- BatchNorm (running statistics) into the preceding linear layer's weight and bias
  (the standard inference-time folding, e.g. ``torch.ao.nn.intrinsic`` /
  ``torch.fx`` conv-BN fusion);
- the condition one-hot columns of the first layer into one lookup table per
  condition column (a one-hot times a weight matrix is a row of it);
- the decoder-noise sd and the latent prior's Gaussian of each combination into
  cached arrays.

What is left per request is a few numpy matrix products, which numpy's OpenBLAS
also runs faster than torch's CPU kernels here at every n (one thread each, 2-CPU
AMD EPYC machine: 16 against 38 ms for 1,024 x 512 times 512 x 977; torch's BLAS
here is MKL, often slower on AMD CPUs, so the gap may differ elsewhere). The values are
those of :meth:`cvae_ray.model.cvae.CVAE.draw` on the same draws up to float32
rounding: BLAS libraries sum in different orders, and OpenBLAS's order can change
with its thread count and the number of rows in a pass (tests check agreement).
Only CPU models whose decoder holds linear, BatchNorm1d, ReLU, Dropout and Identity
layers fold (the DP model's LayerNorm does not); others keep the torch path.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from cvae_ray.config import SampleConfig
from cvae_ray.model.cvae import SAMPLE_CHUNK
from cvae_ray.model.draws import combination_rows


class FoldedDecoder:
    """An eval-mode CVAE decoder as numpy arrays, for sampling on CPU.

    Build with :meth:`of`; the model must not change afterwards (a loaded bundle's
    model does not).

    Attributes:
        condition_tables: One ``(size_j, width_1)`` float32 table per condition column:
            the first layer's contribution of each value (BatchNorm folded in).
        layers: ``(weight_t, bias, relu)`` per linear layer, ``weight_t`` ``(in, out)``
            float32; the first layer's ``weight_t`` covers the latent code only.
        offset_tables: One ``(size_j, n_genes)`` float32 table per condition column of the
            model's fixed output effects (:attr:`CVAE.condition_offset`); empty without.
    """

    def __init__(self, model: nn.Module, condition_tables: list[np.ndarray],
                 layers: list[tuple[np.ndarray, np.ndarray, bool]],
                 offset_tables: list[np.ndarray] | None = None) -> None:
        self.model = model
        self.condition_tables = condition_tables
        self.layers = layers
        self.offset_tables = offset_tables or []
        self._scales: dict[tuple[float, float], np.ndarray] = {}
        self._priors: dict[tuple[int, ...], tuple[np.ndarray, np.ndarray]] = {}

    @classmethod
    @torch.no_grad()
    def of(cls, model: nn.Module) -> "FoldedDecoder | None":
        """Fold a CVAE's decoder; ``None`` when it cannot be folded.

        Args:
            model: A :class:`~cvae_ray.model.cvae.CVAE` in eval mode.

        Returns:
            The folded decoder, or ``None`` for a model on another device than the
            CPU, in training mode, or with a decoder layer other than linear,
            BatchNorm1d, ReLU, Dropout and Identity.
        """
        if (any(m.training for m in model.modules())
                or model.gene_log_var.device.type != "cpu"):
            return None
        layers: list[list] = []  # [weight (out, in) float64, bias, relu]
        for module in [*model.decoder, model.to_mean]:
            if isinstance(module, nn.Linear):
                bias = (module.bias.double() if module.bias is not None
                        else torch.zeros(module.out_features, dtype=torch.float64))
                layers.append([module.weight.double(), bias, False])
            elif isinstance(module, nn.BatchNorm1d) and layers and not layers[-1][2]:
                if not module.track_running_stats or module.running_mean is None:
                    return None
                scale = 1.0 / torch.sqrt(module.running_var.double() + module.eps)
                shift = -module.running_mean.double() * scale
                if module.affine:
                    scale, shift = (scale * module.weight.double(),
                                    shift * module.weight.double() + module.bias.double())
                weight, bias, _ = layers[-1]
                layers[-1][:2] = [weight * scale[:, None], bias * scale + shift]
            elif isinstance(module, nn.ReLU) and layers:
                layers[-1][2] = True
            elif not isinstance(module, (nn.Dropout, nn.Identity)):
                return None
        latent_dim = model.config.latent_dim
        first = layers[0][0]
        bounds = np.cumsum([latent_dim, *model.condition_sizes])
        tables = [np.ascontiguousarray(first[:, a:b].T.float().numpy())
                  for a, b in zip(bounds[:-1], bounds[1:])]
        layers[0][0] = first[:, :latent_dim]
        folded = [(np.ascontiguousarray(w.T.float().numpy()), b.float().numpy(), relu)
                  for w, b, relu in layers]
        offsets = []
        if model.condition_offset is not None:
            rows = np.cumsum([0, *model.condition_sizes])
            offsets = [np.ascontiguousarray(model.condition_offset[a:b].float().numpy())
                       for a, b in zip(rows[:-1], rows[1:])]
        return cls(model, tables, folded, offsets)

    def draw(self, codes: np.ndarray, latent_noise: np.ndarray,
             gene_noise: np.ndarray | None, settings: SampleConfig) -> np.ndarray:
        """Samples from given standard-normal draws, as :meth:`CVAE.draw` makes them.

        Args:
            codes: ``(n, n_conditions)`` int64 condition codes.
            latent_noise: ``(n, latent_dim)`` float32 standard-normal draws.
            gene_noise: ``(n, n_genes)`` float32 draws for the decoder noise, or ``None``
                for decoder means.
            settings: Sampling settings (latent prior, temperature, noise calibration,
                spread correction), as in :meth:`CVAE.draw`.

        Returns:
            ``(n, n_genes)`` float32 samples in standardised space (a new array).
        """
        z = self._latent(codes, latent_noise, settings)
        scale = (self._scale(settings) if gene_noise is not None and settings.temperature > 0
                 else None)
        n_genes = self.layers[-1][0].shape[1]
        out = np.empty((len(codes), n_genes), dtype=np.float32)
        noisy = (np.empty((min(len(codes), SAMPLE_CHUNK), n_genes), dtype=np.float32)
                 if scale is not None else None)
        spread = self.model.spread
        if not (scale is not None and spread is not None and settings.spread_correction > 0):
            spread = None
        index = spread.index(torch.from_numpy(codes)) if spread is not None else None
        # Chunks of rows, as CVAE.draw on CPU: the hidden activations stay in cache, and
        # the output is written in place (no chunk-sized copies beyond ``noisy``).
        for start in range(0, len(codes), SAMPLE_CHUNK):
            rows = slice(start, start + SAMPLE_CHUNK)
            part = out[rows]
            self._decode(z[rows], codes[rows], part)
            if scale is not None:
                chunk = noisy[:len(part)]
                np.multiply(gene_noise[rows], scale, out=chunk)
                part += chunk
            if spread is not None:
                # In place (torch.from_numpy shares the memory), per chunk: its
                # temporaries are the size of the chunk, not of the request.
                spread.apply(torch.from_numpy(part), index[rows], settings)
        return out

    def _decode(self, z: np.ndarray, codes: np.ndarray, out: np.ndarray) -> None:
        """Write the decoder means of latent codes ``(n, latent_dim)`` into ``out``
        ``(n, n_genes)``."""
        h = z
        last = len(self.layers) - 1
        for i, (weight_t, bias, relu) in enumerate(self.layers):
            h = np.matmul(h, weight_t, out=out if i == last else None)
            h += bias
            if i == 0:
                for j, table in enumerate(self.condition_tables):
                    h += table[codes[:, j]]
            if relu:
                np.maximum(h, 0.0, out=h)
        for j, table in enumerate(self.offset_tables):
            out += table[codes[:, j]]

    def _latent(self, codes: np.ndarray, noise: np.ndarray, settings: SampleConfig
                ) -> np.ndarray:
        """Latent codes: the fitted prior's Gaussian of each row's combination, or the draws."""
        prior = self.model.latent_prior
        if not (settings.fitted_prior and prior is not None) or len(codes) == 0:
            return noise
        z = np.empty_like(noise)
        for rows in combination_rows(codes):
            first = codes[rows][0]
            mean, factor_t = self._prior(tuple(int(c) for c in first))
            z[rows] = noise[rows] @ factor_t + mean
        return z

    def _prior(self, combo: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        """``(mean, factor.T)`` of a combination's latent Gaussian (cached)."""
        if combo not in self._priors:
            mean, factor = self.model.latent_prior.gaussian(combo)
            self._priors[combo] = (mean.float().numpy().copy(),
                                   np.ascontiguousarray(factor.float().numpy().T))
        return self._priors[combo]

    def _scale(self, settings: SampleConfig) -> np.ndarray:
        """Per-gene decoder-noise sd under ``settings`` (cached)."""
        key = (float(settings.noise_calibration), float(settings.temperature))
        if key not in self._scales:
            self._scales[key] = self.model.noise_scale(settings).float().numpy().copy()
        return self._scales[key]


__all__ = ["FoldedDecoder"]
