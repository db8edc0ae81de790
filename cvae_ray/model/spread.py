"""Per-combination, per-gene spread and mean correction, fitted after training.

The decoder's per-gene noise and the pooled noise gap (:mod:`cvae_ray.model.noise_gap`)
give every condition combination the same per-gene noise, yet real combinations differ
in which genes vary: a gene can vary a lot within tumours and barely within normal
tissue. The model's samples then have per-gene sds that agree poorly with the real
within-combination sds (per-gene sd agreement 0.26 against 0.35 real-vs-real on the
RNAseqDB validation split, 0.13 against 0.31 on the TCGA microarray set).

The model's combination means are shrunk too: conditional generators shrink the
differences between conditions (log2 fold changes), and the decoder's means of a
combination sit between its training mean and the others'.

After training, on the training split only, each seen combination ``c`` gets the
centre ``m_c`` (per-gene mean) and sd ``s_c`` of :data:`DRAWS` of the model's own
samples, a target sd ``t_c``: its training rows' per-gene sd, shrunk towards the
pooled within-combination sd by the weight ``w_c = n_c / (n_c + SHRINKAGE_ROWS)`` (a
combination with few rows borrows the others' spread; variances are unbiased), and a
mean shift ``d_c = w_c * (mu_c - m_c)`` towards its training rows' per-gene mean
``mu_c`` (with few rows, the model's own mean keeps most of the weight). Sampling
then moves each sample's combination centre and rescales its deviation from it, per
gene::

    x' = m_c + a * b * d_c + (x - m_c) * (t_c / s_c) ** a

with ``a = SampleConfig.spread_correction`` (0: unchanged, 1: the full ratio), chosen
on validation together with the temperature and noise calibration
(:mod:`cvae_ray.model.sampling_choice`), and ``b = SampleConfig.mean_correction``
(0 by default: the decoder's means are kept). Gene-gene correlations within a
combination are kept. Combinations never seen in training have no training rows,
so their samples are left as the model draws them.

The shift is a trade (it keeps log2 fold changes and raises gamma, and costs TSTR on
RNAseqDB: docs/quality.md), so it is off unless asked for. It acts only where the
spread correction does (``a > 0``).

The ratios are fitted at the bundle's chosen temperature and noise calibration; a
request that overrides the temperature keeps the same ratios. Decoder means
(``noise=False`` or temperature 0) are never rescaled.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable, Mapping

import numpy as np
import torch

from cvae_ray.config import SampleConfig
from cvae_ray.model.draws import SharedDraws, noise_scale_of, one_combination

#: Samples of the model drawn per combination to estimate its centre and sd.
DRAWS = 256
#: A combination with n training rows keeps n / (n + SHRINKAGE_ROWS) of its own
#: per-gene variance and takes the rest from the pooled within-combination variance.
SHRINKAGE_ROWS = 10
#: Largest per-gene ratio ``t_c / s_c`` applied (bounds genes the model barely varies).
MAX_RATIO = 4.0
_EPS = 1e-12


@dataclass
class SpreadCorrection:
    """Per-combination centres and sd ratios of the model's samples.

    Attributes:
        codes: ``(K, n_conditions)`` int64 condition codes of the fitted combinations.
        centres: ``(K, n_genes)`` float32 per-gene means of the model's samples.
        ratios: ``(K, n_genes)`` float32 target sd over the samples' sd, in ``[0, MAX_RATIO]``.
        shifts: ``(K, n_genes)`` float32 mean shift ``d_c`` (standardised units);
            zeros for a bundle saved before the shift existed.
    """

    codes: torch.Tensor
    centres: torch.Tensor
    ratios: torch.Tensor
    shifts: torch.Tensor

    def to_state(self) -> dict[str, torch.Tensor]:
        """Plain tensors, for the model's state_dict (loadable with ``weights_only=True``)."""
        return {"spread_codes": self.codes, "spread_centres": self.centres,
                "spread_ratios": self.ratios, "spread_shifts": self.shifts}

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor]) -> "SpreadCorrection | None":
        """Inverse of :meth:`to_state`; ``None`` when the state has no correction."""
        if "spread_codes" not in state:
            return None
        centres = state["spread_centres"].float()
        shifts = state.get("spread_shifts")
        return cls(codes=state["spread_codes"].long(), centres=centres,
                   ratios=state["spread_ratios"].float(),
                   shifts=torch.zeros_like(centres) if shifts is None else shifts.float())

    def index(self, codes: torch.Tensor) -> torch.Tensor:
        """Each row's position among the fitted combinations.

        Args:
            codes: ``(n, n_conditions)`` condition codes.

        Returns:
            ``(n,)`` int64 tensor on ``codes``' device; -1 for a combination not fitted.
        """
        if len(codes) > 1 and one_combination(codes):
            # One combination: match its first row only.
            return self.index(codes[:1]).expand(len(codes)).clone()
        # One broadcast comparison, as LatentPrior.transform matches rows: a loop over
        # the K combinations would cost K small ops per request.
        match = (codes[:, None, :] == self.codes.to(codes.device)[None, :, :]).all(dim=2)
        return torch.where(match.any(dim=1), match.long().argmax(dim=1),
                           torch.full_like(match[:, 0], -1, dtype=torch.long))

    @torch.no_grad()
    def apply(self, samples: torch.Tensor, index: torch.Tensor,
              settings: SampleConfig) -> torch.Tensor:
        """Rescale each row's deviation from its combination's centre and move the centre
        (in place).

        Args:
            samples: ``(n, n_genes)`` float samples in standardised space.
            index: ``(n,)`` their combinations' positions (:meth:`index`; -1: unchanged).
            settings: ``spread_correction`` is ``a`` of the module docstring (0 changes
                nothing), ``mean_correction`` is ``b`` (0: the centres stay). Every
                sampling path passes its settings whole, so none can miss one.

        Returns:
            ``samples``.
        """
        exponent = settings.spread_correction
        if exponent <= 0:
            return samples
        index = index.to(samples.device)
        fitted = index >= 0
        if not bool(fitted.any()):
            return samples
        rows = index[fitted]
        centres = self.centres.to(samples)[rows]
        factors = self.ratios.to(samples)[rows].pow_(exponent)
        shifted = (self.shifts.to(samples)[rows].mul_(exponent * settings.mean_correction)
                   .add_(centres))
        samples[fitted] = (samples[fitted] - centres).mul_(factors).add_(shifted)
        return samples


@torch.no_grad()
def fit_spread(model: torch.nn.Module, x_train: torch.Tensor, codes_train: torch.Tensor,
               sample: SampleConfig, draws: int = DRAWS) -> SpreadCorrection:
    """Fit the correction of every combination in the training split.

    Args:
        model: The CVAE with its latent prior and noise gap set for ``sample``.
        x_train: ``(n, n_genes)`` standardised training expression.
        codes_train: ``(n, n_conditions)`` training condition codes.
        sample: The sampling settings the ratios are fitted for (its own
            ``spread_correction`` is ignored: the model's samples are measured without one).
        draws: Samples of the model per combination (seeded by the combination's position).

    Returns:
        The correction, on CPU.
    """
    return fit_spreads(model, x_train, codes_train, sample,
                       {None: noise_scale_of(model, sample)}, draws)[None]


@torch.no_grad()
def fit_spreads(model: torch.nn.Module, x_train: torch.Tensor, codes_train: torch.Tensor,
                sample: SampleConfig, scales: Mapping[Hashable, torch.Tensor | None],
                draws: int = DRAWS) -> dict[Hashable, SpreadCorrection]:
    """:func:`fit_spread` for several decoder-noise scales from one set of draws.

    Temperature and noise calibration only change the per-gene scale of the decoder
    noise (``CVAE.noise_scale``), so the samples of every setting come from the same
    decoder means and noise draws (:class:`SharedDraws`), decoded once per
    combination: the correction for a scale equals :func:`fit_spread` with the
    settings that give that scale.

    Args:
        model: The CVAE with its latent prior set.
        x_train: ``(n, n_genes)`` standardised training expression.
        codes_train: ``(n, n_conditions)`` training condition codes.
        sample: ``noise``, ``latent``, ``draws`` and ``noise_centring`` of the samples.
        scales: Per setting (any key), the ``(n_genes,)`` noise standard deviation
            ``model.noise_scale(setting)``, or ``None`` for decoder means.
        draws: Samples of the model per combination (seeded by the combination's position).

    Returns:
        One correction per key of ``scales``, on CPU.
    """
    x = x_train.detach().cpu().double().numpy()
    combos, inverse = np.unique(codes_train.cpu().numpy(), axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    counts = np.bincount(inverse, minlength=len(combos))
    several = counts > 1
    # Unbiased variances: per combination (n - 1), pooled over the combinations with
    # two or more rows (sum of squares over N - K); with none, the total variance.
    within = [x[inverse == k].var(axis=0, ddof=1) if several[k] else None
              for k in range(len(combos))]
    if several.any():
        pooled = (sum((counts[k] - 1) * within[k] for k in np.flatnonzero(several))
                  / (counts[several] - 1).sum())
    else:
        pooled = x.var(axis=0, ddof=1) if len(x) > 1 else np.ones(x.shape[1])
    was_training = model.training
    model.eval()
    centres: dict[Hashable, list[np.ndarray]] = {key: [] for key in scales}
    ratios: dict[Hashable, list[np.ndarray]] = {key: [] for key in scales}
    shifts: dict[Hashable, list[np.ndarray]] = {key: [] for key in scales}
    for k, combo in enumerate(combos):
        codes = torch.from_numpy(np.repeat(combo[None, :], draws, axis=0))
        shared = SharedDraws(model, codes, k, sample)
        weight = counts[k] / (counts[k] + SHRINKAGE_ROWS)
        target = weight * within[k] + (1.0 - weight) * pooled if several[k] else pooled
        mean = x[inverse == k].mean(axis=0)
        for key, scale in scales.items():
            synthetic = shared.noisy(scale).cpu().double()
            centre = synthetic.mean(dim=0).numpy()
            centres[key].append(centre)
            shifts[key].append(weight * (mean - centre))
            ratio = np.sqrt(target / np.maximum(synthetic.var(dim=0).numpy(), _EPS))
            # A NaN (no spread anywhere) leaves the gene as drawn.
            ratios[key].append(np.clip(np.nan_to_num(ratio, nan=1.0), 0.0, MAX_RATIO))
    model.train(was_training)
    codes = torch.from_numpy(combos.astype(np.int64))
    def stacked(rows: list[np.ndarray]) -> torch.Tensor:
        return torch.from_numpy(np.stack(rows).astype(np.float32))

    return {key: SpreadCorrection(codes=codes, centres=stacked(centres[key]),
                                  ratios=stacked(ratios[key]), shifts=stacked(shifts[key]))
            for key in scales}
