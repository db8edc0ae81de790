"""Utility metrics: is synthetic data useful for training a classifier on real data?

All use one fixed classifier (:func:`make_classifier`) predicting a single
condition column (e.g. tissue), so scores are comparable across runs.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from cvae_ray.errors import InvalidDataError
from cvae_ray.metrics.fidelity import check_labels, check_matrix, check_same_genes


def make_classifier(seed: int = 0) -> Pipeline:
    """The fixed classifier of every utility metric.

    StandardScaler (fitted on the training set) then LogisticRegression with
    C=1, lbfgs and max_iter=1000.

    Args:
        seed: The classifier's random_state.

    Returns:
        An unfitted pipeline.
    """
    return make_pipeline(StandardScaler(),
                         LogisticRegression(C=1.0, max_iter=1000, random_state=seed))


def _labelled(x: np.ndarray, y: Sequence | np.ndarray, x_name: str, y_name: str
              ) -> tuple[np.ndarray, np.ndarray]:
    x = check_matrix(x, x_name, min_samples=1)
    return x, check_labels(y, len(x), y_name, x_name)


def _fit_score(x_fit: np.ndarray, y_fit: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
               fit_name: str, seed: int) -> dict[str, float]:
    classes = np.unique(y_fit)
    if len(classes) < 2:
        raise InvalidDataError(
            f"{fit_name} has a single class {classes.tolist()[0]!r}; "
            "a classifier needs at least 2.")
    predicted = make_classifier(seed).fit(x_fit, y_fit).predict(x_test)
    return {"accuracy": float(accuracy_score(y_test, predicted)),
            "macro_f1": float(f1_score(y_test, predicted, labels=np.unique(y_test),
                                       average="macro", zero_division=0))}


def _train_test(x_fit, y_fit, x_test, y_test, fit_name: str, seed: int) -> dict[str, float]:
    x_fit, y_fit = _labelled(x_fit, y_fit, f"x_{fit_name}", f"y_{fit_name}")
    x_test, y_test = _labelled(x_test, y_test, "x_test", "y_test")
    check_same_genes(**{f"x_{fit_name}": x_fit, "x_test": x_test})
    return _fit_score(x_fit, y_fit, x_test, y_test, f"y_{fit_name}", seed)


def tstr(x_syn: np.ndarray, y_syn: Sequence | np.ndarray, x_test: np.ndarray,
         y_test: Sequence | np.ndarray, seed: int = 0) -> dict[str, float]:
    """Train on synthetic, test on real: the classifier fitted on synthetic samples.

    Test samples whose label the synthetic set lacks cannot be predicted and
    count as errors. Macro-F1 averages over the labels of ``y_test`` (a class
    never predicted scores 0).

    Both values range over [0, 1], higher is better; the reference is
    :func:`trtr` (or TSTR with a real set standing in for the synthetic one).

    Args:
        x_syn: Synthetic samples x genes.
        y_syn: Condition label of each synthetic sample.
        x_test: Real test samples x genes.
        y_test: Condition label of each test sample.
        seed: Seed of the classifier.

    Returns:
        ``{"accuracy", "macro_f1"}`` on the real test set.

    Raises:
        InvalidDataError: Bad shapes, values or labels, or a single class in ``y_syn``.
    """
    return _train_test(x_syn, y_syn, x_test, y_test, "syn", seed)


def trtr(x_train: np.ndarray, y_train: Sequence | np.ndarray, x_test: np.ndarray,
         y_test: Sequence | np.ndarray, seed: int = 0) -> dict[str, float]:
    """Train on real, test on real: :func:`tstr` with real training samples.

    The ceiling TSTR is compared with. Range [0, 1], higher is better.

    Args:
        x_train: Real training samples x genes.
        y_train: Condition label of each training sample.
        x_test: Real test samples x genes.
        y_test: Condition label of each test sample.
        seed: Seed of the classifier.

    Returns:
        ``{"accuracy", "macro_f1"}`` on the real test set.

    Raises:
        InvalidDataError: Bad shapes, values or labels, or a single class in ``y_train``.
    """
    return _train_test(x_train, y_train, x_test, y_test, "train", seed)


def per_class_subset(y: np.ndarray, n_per_class: int, seed: int = 0) -> np.ndarray:
    """Positions of up to ``n_per_class`` rows of each label, drawn with a seed.

    The draw for a smaller ``n`` is a prefix of the draw for a larger one (same
    seed), so an augmentation curve adds samples instead of redrawing them.
    Labels with fewer rows than ``n_per_class`` give all they have.

    Args:
        y: One label per row.
        n_per_class: Rows wanted per label.
        seed: Seed of the per-label shuffle.

    Returns:
        Sorted row positions.
    """
    rng = np.random.default_rng(seed)
    picked = []
    for label in sorted(set(y.tolist()), key=str):
        rows = rng.permutation(np.flatnonzero(y == label))
        picked.append(rows[:n_per_class])
    return np.sort(np.concatenate(picked))


def augmentation_gain(x_train: np.ndarray, y_train: Sequence | np.ndarray, x_syn: np.ndarray,
                      y_syn: Sequence | np.ndarray, x_test: np.ndarray,
                      y_test: Sequence | np.ndarray, sizes: Sequence[int] = (5, 10, 25),
                      seed: int = 0) -> list[dict[str, float]]:
    """Test scores of a classifier trained on a few real samples, with and without synthetic ones.

    For each ``n`` in ``sizes``, :func:`per_class_subset` draws ``n`` real
    training samples per class; the classifier is fitted on that subset alone
    and on the subset plus all of ``x_syn``, and both are scored on the real
    test set as in :func:`tstr`. The caller decides how many synthetic samples
    to pass (Lacan 2023 adds up to 1,000).

    Scores range over [0, 1], higher is better; the gain is augmented minus
    real-only (positive means synthetic data helps).

    Args:
        x_train: Real training samples x genes.
        y_train: Their condition labels.
        x_syn: Synthetic samples x genes.
        y_syn: Their condition labels.
        x_test: Real test samples x genes.
        y_test: Their condition labels.
        sizes: Real samples per class, each a positive integer.
        seed: Seed of the subsets and the classifier.

    Returns:
        One row per size: ``n_per_class``, ``n_real``, ``n_synthetic``,
        ``accuracy_real_only``, ``accuracy_augmented``, ``macro_f1_real_only``,
        ``macro_f1_augmented``.

    Raises:
        InvalidDataError: Bad shapes, values, labels or sizes, or a real subset
            with a single class.
    """
    x_train, y_train = _labelled(x_train, y_train, "x_train", "y_train")
    x_syn, y_syn = _labelled(x_syn, y_syn, "x_syn", "y_syn")
    x_test, y_test = _labelled(x_test, y_test, "x_test", "y_test")
    check_same_genes(x_train=x_train, x_syn=x_syn, x_test=x_test)
    bad = [n for n in sizes if not isinstance(n, (int, np.integer)) or n < 1]
    if bad or not sizes:
        raise InvalidDataError(f"augmentation sizes must be positive integers, got {list(sizes)}.")
    rows = []
    for n in sizes:
        subset = per_class_subset(y_train, int(n), seed)
        x_real, y_real = x_train[subset], y_train[subset]
        real_only = _fit_score(x_real, y_real, x_test, y_test, "the real subset", seed)
        augmented = _fit_score(np.vstack([x_real, x_syn]), np.concatenate([y_real, y_syn]),
                               x_test, y_test, "the augmented set", seed)
        rows.append({"n_per_class": int(n), "n_real": len(subset), "n_synthetic": len(x_syn),
                     "accuracy_real_only": real_only["accuracy"],
                     "accuracy_augmented": augmented["accuracy"],
                     "macro_f1_real_only": real_only["macro_f1"],
                     "macro_f1_augmented": augmented["macro_f1"]})
    return rows
