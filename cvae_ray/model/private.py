"""Differentially private training steps: DP-SGD through Opacus.

Opacus computes per-sample gradients with hooks on the layers that own parameters,
clips each sample's gradient to ``max_grad_norm``, adds Gaussian noise and samples
batches by Poisson sampling; its accountant gives the epsilon spent. Two things of
the CVAE need adapting: BatchNorm mixes samples (refused: use ``norm='layer'`` or
``'none'``), and the per-gene decoder log-variance is a parameter of the CVAE itself,
not of a layer, so during DP training it lives in a one-parameter layer
(:class:`GeneLogVar`) and goes back into the plain CVAE's ``state_dict`` afterwards.
"""

from __future__ import annotations

import secrets
import warnings
from typing import Any, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from cvae_ray.config import ModelConfig, PrivacyConfig, TrainConfig
from cvae_ray.errors import InvalidConfigError
from cvae_ray.model.cvae import CVAE
from cvae_ray.model.private_means import PrivateMeans, sgd_sigma

#: What a DP bundle's guarantee covers, recorded in its ``privacy`` block.
COVERS = ("the model weights, the gene levels and the condition effects, with respect to "
          "adding or removing one sample of the training split, treating the training "
          "condition counts as public; the latent prior, noise "
          "calibration and spread correction use no training data; validation rows "
          "(checkpoint selection, early stopping) and the recorded training condition counts "
          "are not covered")


class GeneLogVar(nn.Module):
    """The per-gene decoder log-variance as a layer, so that Opacus sees its gradient.

    ``forward(x)`` returns the parameter broadcast to ``x``'s shape: each sample's
    gradient of the parameter is then that sample's gradient of the output.
    """

    def __init__(self, weight: nn.Parameter) -> None:
        super().__init__()
        self.weight = weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(batch, n_genes)``: the log-variance repeated for each row of ``x``."""
        return self.weight.expand(x.shape[0], -1)


class PrivateCVAE(CVAE):
    """The CVAE as trained under DP-SGD: same layers, the log-variance in :class:`GeneLogVar`.

    Args:
        n_genes: Number of genes.
        condition_sizes: Number of values of each condition column.
        config: Architecture; ``norm='batch'`` is refused.

    Raises:
        InvalidConfigError: ``config.norm`` is ``batch``.
    """

    def __init__(self, n_genes: int, condition_sizes: Sequence[int], config: ModelConfig) -> None:
        require_dp_model(config)
        super().__init__(n_genes, condition_sizes, config)
        weight = self._parameters.pop("gene_log_var")
        self.gene_log_var_layer = GeneLogVar(weight)

    @property
    def gene_log_var(self) -> nn.Parameter:  # type: ignore[override]
        """The log-variance parameter (owned by :attr:`gene_log_var_layer`)."""
        return self.gene_log_var_layer.weight

    def batch_log_var(self, x: torch.Tensor) -> torch.Tensor:
        """``(batch, n_genes)``: the log-variance taken per sample, so that Opacus sees
        it as a layer's output (see :meth:`CVAE.batch_log_var`)."""
        return self.gene_log_var_layer(x).clamp(min=self.config.min_log_var)

    def load_plain_state(self, state: dict[str, Any]) -> None:
        """Load a plain :class:`CVAE` ``state_dict`` (what :meth:`plain_state` gives)."""
        self.load_state_dict({("gene_log_var_layer.weight" if key == "gene_log_var" else key):
                              value for key, value in state.items()})

    def plain_state(self) -> dict[str, Any]:
        """A detached CPU ``state_dict`` that a plain :class:`CVAE` loads."""
        state = {}
        for key, value in self.state_dict().items():
            key = key.replace("gene_log_var_layer.weight", "gene_log_var")
            state[key] = (value.detach().cpu().clone() if isinstance(value, torch.Tensor)
                          else value)
        return state


def require_dp_model(config: ModelConfig) -> None:
    """Refuse an architecture DP-SGD cannot train.

    Raises:
        InvalidConfigError: ``norm='batch'``: BatchNorm mixes the samples of a batch, so
            one sample's gradient is not its own and cannot be clipped.
    """
    if config.norm == "batch":
        raise InvalidConfigError(
            "norm='batch' is not valid with differentially private training: BatchNorm mixes "
            "the samples of a batch, so per-sample gradients cannot be clipped; use "
            "norm='layer' or norm='none'.")


class PrivateTraining:
    """A CVAE made private by Opacus, with its optimiser, Poisson loader and accountant.

    Args:
        model: A :class:`PrivateCVAE`.
        optimizer: Its (not yet private) optimiser.
        x: ``(n_train, n_genes)`` training tensor.
        codes: Matching condition codes.
        train_config: Batch size (the expected Poisson batch size), epochs, seed.
        privacy: Target epsilon, delta, clipping norm, accountant.
        statistics: The releases made before training
            (:class:`cvae_ray.model.private_means.PrivateMeans`), or ``None``: they are
            composed with the DP-SGD steps in the accountant, and the DP-SGD noise
            multiplier is chosen so that both together spend at most ``privacy.epsilon``.
        runs: Number of DP-SGD runs on the same training split that share the budget
            after the releases (the trials of a search): the noise multiplier is chosen
            so that the releases and ``runs`` runs like this one spend at most
            ``privacy.epsilon``. Needs ``statistics``.
        history: DP-SGD steps this run took before a restart, ``[(noise multiplier,
            sample rate, steps)]`` from :meth:`steps_taken`: put back into the accountant.
    """

    def __init__(self, model: PrivateCVAE, optimizer: torch.optim.Optimizer, x: torch.Tensor,
                 codes: torch.Tensor, train_config: TrainConfig, privacy: PrivacyConfig,
                 statistics: PrivateMeans | None = None, runs: int = 1,
                 history: list[tuple[float, float, int]] | None = None) -> None:
        from opacus import PrivacyEngine  # only DP runs load Opacus

        self.privacy = privacy
        self.statistics = statistics
        self.model = model
        self.n_train = int(x.shape[0])
        batch_size = min(train_config.batch_size, self.n_train)
        # The DP-SGD noise comes from a generator seeded from the operating system's
        # entropy and never recorded: noise regenerated from the run's recorded seed could
        # be replayed. (Opacus' secure_mode would need torchcsprng.)
        noise = torch.Generator(device=x.device).manual_seed(secrets.randbits(63))
        generator = torch.Generator().manual_seed(train_config.seed)
        loader = DataLoader(TensorDataset(x, codes), batch_size=batch_size, generator=generator)
        with warnings.catch_warnings():
            # Opacus warns that a secure RNG is off; seeded runs are the project's rule.
            warnings.simplefilter("ignore")
            self.engine = PrivacyEngine(accountant=privacy.accountant)
            if statistics is None:
                self.module, self.optimizer, self.loader = self.engine.make_private_with_epsilon(
                    module=model, optimizer=optimizer, data_loader=loader,
                    target_epsilon=privacy.epsilon, target_delta=privacy.delta,
                    epochs=train_config.epochs, max_grad_norm=privacy.max_grad_norm,
                    poisson_sampling=True, noise_generator=noise)
            else:
                sample_rate = 1.0 / len(loader)
                sigma = sgd_sigma(privacy.epsilon, privacy.delta, statistics.history, sample_rate,
                                  runs * train_config.epochs * len(loader), privacy.accountant)
                self.module, self.optimizer, self.loader = self.engine.make_private(
                    module=model, optimizer=optimizer, data_loader=loader,
                    noise_multiplier=sigma, max_grad_norm=privacy.max_grad_norm,
                    poisson_sampling=True, noise_generator=noise)
                # The releases come first in the composition the accountant reports, then
                # the steps taken before a restart.
                self.engine.accountant.history[:0] = [
                    *statistics.history,
                    *[tuple(step) for step in history or []]]
        self.noise_multiplier = float(self.optimizer.noise_multiplier)
        self.sample_rate = 1.0 / len(self.loader)

    def epoch(self, kl_weight: float) -> float:
        """One epoch of DP-SGD over Poisson-sampled batches.

        Returns:
            NaN: the training loss is a statistic of the training split without noise,
            so it is neither recorded nor reported in DP mode.
        """
        self.module.train()
        for xb, cb in self.loader:
            # An empty Poisson batch still goes through: Opacus clips nothing, adds the
            # noise and counts the step, as the accountant assumes.
            out = self.module(xb, cb, kl_weight)
            self.optimizer.zero_grad(set_to_none=True)
            with warnings.catch_warnings():
                # Opacus' hooks fire on outputs because the data need no gradient: expected.
                warnings.filterwarnings("ignore", message="Full backward hook")
                out.loss.backward()
            self.optimizer.step()
        return float("nan")

    def steps_taken(self) -> list[tuple[float, float, int]]:
        """This run's DP-SGD steps as the accountant holds them (without the releases):
        ``[(noise multiplier, sample rate, steps)]``."""
        history = list(self.engine.accountant.history)
        released = len(self.statistics.history) if self.statistics is not None else 0
        return [tuple(step) for step in history[released:]]

    def spent(self) -> float:
        """Epsilon spent so far at the configured delta (from the accountant)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return float(self.engine.get_epsilon(self.privacy.delta))

    def record(self) -> dict[str, Any]:
        """The ``privacy`` block of the bundle's training record."""
        return {"mechanism": "DP-SGD (Opacus, per-sample clipping, Poisson sampling)",
                "epsilon_spent": round(self.spent(), 4),
                "epsilon_target": self.privacy.epsilon, "delta": self.privacy.delta,
                "max_grad_norm": self.privacy.max_grad_norm,
                "noise_multiplier": round(self.noise_multiplier, 6),
                "sample_rate": self.sample_rate, "accountant": self.privacy.accountant,
                "neighbouring": "add or remove one training sample",
                "covers": COVERS, "statistics": self._statistics_record()}

    def _statistics_record(self) -> dict[str, Any] | None:
        """How the gene levels and condition effects were released (``None``: they were not)."""
        stats = self.statistics
        if stats is None:
            return None
        return {"mechanism": "Gaussian mechanism on sums of clipped vectors, divided by the "
                             "exact counts (cvae_ray.model.private_means)",
                "releases": stats.n_releases,
                "noise_multipliers": [round(sigma, 6) for sigma in stats.sigmas],
                "composed_noise_multiplier": round(stats.history[0][0], 6),
                "clip_norms": [round(norm, 6) for norm in stats.clip_norms],
                "order": "sample means, centred levels, then the effects of each condition "
                         "column in the bundle's order",
                "epsilon_share": self.privacy.statistics_share}
