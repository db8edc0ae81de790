"""TVAE and CTGAN from the ``ctgan`` package (Xu et al. 2019), adapted to conditional sampling.

Both are fitted on a table of the standardised genes plus ONE discrete column,
the joint condition label (e.g. ``lung|gtex``): it carries the same information
as the separate condition columns and gives one column to condition on.

Conditional sampling (neither model guarantees the requested condition):

- CTGAN: ``sample(n, condition_column=label, condition_value=value)`` per
  requested label (CTGAN's own conditional vector, which raises the chance of
  the value but does not force it);
- TVAE: unconditional ``sample(n)`` (TVAE has no conditional sampling).

In both cases rows whose generated label is not the requested one are
rejected, in rounds, for at most ``max_rounds`` rounds; requested rows still
unfilled then get generated rows of any label (counted in ``info`` as
``unmatched_rows``, so the results table can say how much the condition mix
drifted).

Time budget: the per-gene mode-specific normalisation (a Bayesian GMM per
column) runs before the first epoch and takes minutes on ~1,000 genes; the
budget covers it. Training stops after the first epoch that ends past the
budget (at least one epoch always runs), by wrapping the epoch loop's
iterator; ``info`` records the epochs run against the epochs asked for.
There is no checkpoint selection: the validation split is only checked.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Iterator

import numpy as np
import pandas as pd
import torch

from cvae_ray.data.conditions import Vocabulary, joint_labels
from cvae_ray.evaluation.generators import check_fit_inputs

_LABEL = "condition_label"


class _BudgetedEpochs:
    """Stands in for ``tqdm(range(epochs))`` in ctgan's epoch loop and stops it at a deadline."""

    def __init__(self, epochs: range, deadline: float | None, counter: list[int]) -> None:
        self._epochs, self._deadline, self._counter = epochs, deadline, counter

    def __iter__(self) -> Iterator[int]:
        for i in self._epochs:
            if i > 0 and self._deadline is not None and time.perf_counter() > self._deadline:
                return
            self._counter[0] += 1
            yield i

    def set_description(self, *_: Any, **__: Any) -> None:
        """ctgan calls this in verbose mode; nothing to show."""


@contextlib.contextmanager
def _epoch_budget(module: Any, deadline: float | None, counter: list[int]):
    # ctgan has no callback or time limit, and its fit() refits the per-gene
    # transformers on every call, so epochs cannot be run in slices; its epoch
    # loop iterates over `tqdm(range(epochs))` looked up in its module, which is
    # the one place a budget can be enforced without copying its training code.
    original = module.tqdm
    module.tqdm = lambda iterable, **_: _BudgetedEpochs(iterable, deadline, counter)
    try:
        yield
    finally:
        module.tqdm = original


class _CtganFamily:
    """Shared fit/sample logic of :class:`TvaeGenerator` and :class:`CtganGenerator`."""

    name = ""
    _conditional = False

    def __init__(self, *, time_budget_s: float | None = None, epochs: int = 300,
                 batch_size: int = 500, max_rounds: int = 4, device: str = "cpu",
                 **options: Any) -> None:
        self.time_budget_s = time_budget_s
        self.epochs = int(epochs)
        self.batch_size = int(batch_size)
        self.max_rounds = int(max_rounds)
        self.device = device
        self.options = options
        self.info: dict[str, Any] = {}
        self._model: Any = None
        self._genes: list[str] = []
        self._vocab = Vocabulary({})

    def _build(self) -> tuple[Any, Any]:
        raise NotImplementedError

    def fit(self, x_train: np.ndarray, cond_train: pd.DataFrame, x_val: np.ndarray,
            cond_val: pd.DataFrame, seed: int) -> None:
        """Fit on genes + the joint label column, within the time budget."""
        x = check_fit_inputs(x_train, cond_train, "x_train")
        check_fit_inputs(x_val, cond_val, "x_val")
        self._vocab = Vocabulary.fit(cond_train)
        self._genes = [f"g{j}" for j in range(x.shape[1])]
        table = pd.DataFrame(x.astype(np.float64), columns=self._genes)
        table[_LABEL] = joint_labels(self._vocab.decode(self._vocab.encode(cond_train)))
        np.random.seed(int(seed))
        torch.manual_seed(int(seed))
        model, module = self._build()
        model.set_random_state(int(seed))
        started = time.perf_counter()
        deadline = None if self.time_budget_s is None else started + self.time_budget_s
        counter = [0]
        with _epoch_budget(module, deadline, counter):
            model.fit(table, discrete_columns=[_LABEL])
        self._model = model
        self.info = {"epochs_run": counter[0], "max_epochs": self.epochs,
                     "cut_by_budget": counter[0] < self.epochs,
                     "seconds": round(time.perf_counter() - started, 2),
                     "conditional_sampling": ("ctgan condition_column + rejection"
                                              if self._conditional else "rejection")}

    def _draw(self, n: int, label: str | None) -> pd.DataFrame:
        if label is None:
            return self._model.sample(n)
        return self._model.sample(n, condition_column=_LABEL, condition_value=label)

    def sample(self, cond: pd.DataFrame, seed: int) -> np.ndarray:
        """One standardised synthetic row per condition row (see the module notes)."""
        if self._model is None:
            raise RuntimeError("fit the generator before sampling.")
        wanted = joint_labels(self._vocab.decode(self._vocab.encode(cond)))
        np.random.seed(int(seed))
        torch.manual_seed(int(seed))
        self._model.set_random_state(int(seed))
        out = np.full((len(wanted), len(self._genes)), np.nan, dtype=np.float32)
        open_rows = {c: list(np.flatnonzero(wanted == c)) for c in sorted(set(wanted))}
        spare: list[np.ndarray] = []
        for _ in range(self.max_rounds):
            todo = {c: rows for c, rows in open_rows.items() if rows}
            if not todo:
                break
            # Few large draws: each sample() call pays ctgan's per-column inverse
            # transform, which costs far more than generating the rows.
            if self._conditional:
                draws = [self._draw(max(4 * len(rows), 50), c) for c, rows in todo.items()]
            else:
                draws = [self._draw(max(8 * sum(map(len, todo.values())), 500), None)]
            for frame in draws:
                values = frame[self._genes].to_numpy(np.float32)
                labels = frame[_LABEL].astype(str).to_numpy()
                for i, label in enumerate(labels):
                    rows = open_rows.get(label)
                    if rows:
                        out[rows.pop()] = values[i]
                    elif len(spare) < len(wanted):
                        spare.append(values[i])
        left = [r for rows in open_rows.values() for r in rows]
        for k, row in enumerate(left):
            out[row] = spare[k % len(spare)] if spare else self._draw(1, None)[
                self._genes].to_numpy(np.float32)[0]
        self.info["unmatched_rows"] = len(left)
        return out


class TvaeGenerator(_CtganFamily):
    """TVAE (``ctgan.TVAE``) with rejection sampling for the condition mix.

    Args:
        time_budget_s: Wall-clock budget of ``fit`` (transformers + epochs).
        epochs: Epochs asked for (ctgan's default 300).
        batch_size: ctgan's default 500.
        max_rounds: Rejection-sampling rounds before unmatched rows are filled.
        device: ``cpu``, or anything else to let ctgan use the GPU if there is one.
        **options: Other ``ctgan.TVAE`` arguments.
    """

    name = "tvae"

    def _build(self):
        from ctgan.synthesizers import tvae

        return tvae.TVAE(epochs=self.epochs, batch_size=self.batch_size,
                         enable_gpu=self.device != "cpu", **self.options), tvae


class CtganGenerator(_CtganFamily):
    """CTGAN (``ctgan.CTGAN``) with its conditional vector plus rejection sampling.

    Args: as :class:`TvaeGenerator` (``batch_size`` must be a multiple of 10, CTGAN's pac).
    """

    name = "ctgan"
    _conditional = True

    def _build(self):
        from ctgan.synthesizers import ctgan

        return ctgan.CTGAN(epochs=self.epochs, batch_size=self.batch_size,
                           enable_gpu=self.device != "cpu", **self.options), ctgan
