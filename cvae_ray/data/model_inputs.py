"""From a validated dataset to model-ready arrays: split, gene selection, imputation, scaling.

Everything fitted here (gene ranking, imputation values, standardisation) is
fitted on the training split only, so validation and test stay unseen.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd

from cvae_ray.config import DataSpec
from cvae_ray.data.conditions import Vocabulary
from cvae_ray.data.dataset import Dataset
from cvae_ray.data.genes import match_gene_list, read_gene_list, top_variable_genes
from cvae_ray.data.preprocess import Preprocessor
from cvae_ray.data.splits import Split, cap_training, stratified_split
from cvae_ray.errors import InvalidConfigError, InvalidDataError


@dataclass
class Prepared:
    """A dataset ready for training.

    Attributes:
        genes: Selected genes, in model order.
        vocab: Each condition column's values, sorted; a value's code is its position.
        codes: ``(n_samples, n_conditions)`` int64 condition codes.
        x: ``(n_samples, n_genes)`` float32 standardised expression.
        split: Row positions of train / validation / test.
        preprocessor: The fitted preprocessing.
        sample_ids: Sample ids, row order.
        conditions: The condition table, row order (strings).
        genes_not_found: Gene-list entries absent from the data.
        fingerprint: SHA-256 of the selected raw data, ids and conditions.
    """

    genes: list[str]
    vocab: dict[str, list[str]]
    codes: np.ndarray
    x: np.ndarray
    split: Split
    preprocessor: Preprocessor
    sample_ids: list[str]
    conditions: pd.DataFrame
    genes_not_found: list[str]
    fingerprint: str

    def part(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """``(x, codes)`` of the ``train``, ``val`` or ``test`` rows."""
        rows = getattr(self.split, name)
        return self.x[rows], self.codes[rows]

    def condition_frame(self, name: str) -> pd.DataFrame:
        """The condition table of one part (for sampling with the same condition mix)."""
        return self.conditions.iloc[getattr(self.split, name)].reset_index(drop=True)


def fingerprint(expression: pd.DataFrame, conditions: pd.DataFrame) -> str:
    """SHA-256 over the values, sample ids, gene names and conditions of a dataset."""
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(expression.to_numpy(np.float32)).tobytes())
    digest.update("\x1f".join(map(str, expression.index)).encode())
    digest.update("\x1f".join(map(str, expression.columns)).encode())
    digest.update(conditions.to_csv(index=False).encode())
    return digest.hexdigest()


def prepare(dataset: Dataset, spec: DataSpec, *, private: bool = False,
            max_train_per_combination: int | None = None,
            cap_seed: int | None = None) -> Prepared:
    """Split, select genes, impute and standardise a dataset as ``spec`` says.

    Args:
        dataset: A validated dataset (see :func:`cvae_ray.data.dataset.read_dataset`).
        spec: Conditions, gene selection, NaN policy, split fractions and seed.
        private: For differentially private training: nothing is fitted on the training
            split here (:meth:`Preprocessor.public`), so ``top_genes`` and
            ``nan_policy='impute_mean'`` are refused.
        max_train_per_combination: Keep at most this many training rows per
            condition combination (:func:`cvae_ray.data.splits.cap_training`),
            before anything is fitted; validation and test rows stay the same.
            None keeps the whole training split.
        cap_seed: Seed of that draw (None: ``spec.seed``), so that several draws
            can share one split.

    Returns:
        The prepared arrays and the fitted preprocessing.

    Raises:
        InvalidDataError: Conditions missing from the dataset, too-rare condition values,
            an empty gene selection, values that cannot be log-transformed, or a
            ``max_train_per_combination`` below 1.
        InvalidConfigError: In private mode, ``top_genes`` or ``impute_mean``.
    """
    if private:
        check_private_spec(spec)
    missing = [c for c in spec.conditions if c not in dataset.conditions.columns]
    if missing:
        raise InvalidDataError(f"condition columns {missing} are not in the dataset; it has "
                               f"{list(dataset.conditions.columns)}.")
    conditions = dataset.conditions[list(spec.conditions)].astype(str)
    split = stratified_split(conditions, val_fraction=spec.val_fraction,
                             test_fraction=spec.test_fraction, seed=spec.seed)
    if max_train_per_combination is not None:
        # Before imputation, gene ranking and scaling: the rows left out must not
        # inform anything a generator sees.
        split = cap_training(split, conditions, max_train_per_combination,
                             seed=spec.seed if cap_seed is None else cap_seed)
    expression = dataset.expression
    not_found: list[str] = []
    if spec.genes_file is not None:
        match = match_gene_list(dataset.genes, read_gene_list(spec.genes_file))
        expression = expression[list(match.columns)]
        not_found = list(match.not_found)
    values = expression.to_numpy(np.float64)
    if np.isnan(values).any():
        values = _impute(values, split.train, spec.nan_policy)
    if spec.top_genes is not None:
        train = values[split.train]
        ranked = np.log2(train + 1.0) if spec.log_transform else train
        keep = top_variable_genes(ranked, list(expression.columns), spec.top_genes)
        positions = [expression.columns.get_loc(g) for g in keep]
        expression, values = expression[list(keep)], values[:, positions]
    if expression.shape[1] == 0:
        raise InvalidDataError("the gene selection is empty.")
    if private:
        preprocessor = Preprocessor.public(values.shape[1], log_transform=spec.log_transform)
    else:
        preprocessor = Preprocessor.fit(values[split.train], log_transform=spec.log_transform)
    vocabulary = Vocabulary.fit(conditions, spec.conditions)
    codes, vocab = vocabulary.encode(conditions), vocabulary.levels
    return Prepared(
        genes=[str(g) for g in expression.columns], vocab=vocab, codes=codes,
        x=preprocessor.transform(values), split=split, preprocessor=preprocessor,
        sample_ids=[str(i) for i in expression.index],
        conditions=conditions.reset_index(drop=True), genes_not_found=not_found,
        fingerprint=fingerprint(expression, conditions))


def check_private_spec(spec: DataSpec) -> None:
    """Refuse data settings that read the training split outside a privacy budget.

    Raises:
        InvalidConfigError: ``top_genes`` (a ranking of the training data; give a public
            gene list with ``genes_file`` instead) or ``nan_policy='impute_mean'``.
    """
    if spec.top_genes is not None:
        raise InvalidConfigError(
            f"top_genes={spec.top_genes!r} is not valid with differentially private training: "
            "the ranking reads the training split outside the privacy budget; give a public "
            "gene list (genes_file / --genes) instead.")
    if spec.nan_policy == "impute_mean":
        raise InvalidConfigError(
            "nan_policy='impute_mean' is not valid with differentially private training: the "
            "means read the training split; use 'impute_zero', 'drop_samples' or 'drop_genes'.")


def _impute(values: np.ndarray, train_rows: np.ndarray, policy: str) -> np.ndarray:
    if policy == "impute_zero":
        return np.nan_to_num(values, nan=0.0)
    if policy != "impute_mean":
        raise InvalidDataError(f"the data contain NaN values but nan_policy={policy!r}; use "
                               "'impute_mean' or 'impute_zero', or drop them when reading.")
    means = np.nanmean(values[train_rows], axis=0)
    empty = np.isnan(means)
    if empty.any():
        raise InvalidDataError(f"{int(empty.sum())} genes have no value in any training sample; "
                               "cannot impute their mean (use nan_policy='drop_genes').")
    filled = values.copy()
    rows, cols = np.nonzero(np.isnan(filled))
    filled[rows, cols] = means[cols]
    return filled
