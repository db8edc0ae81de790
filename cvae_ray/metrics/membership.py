"""Membership-inference audit: can an attacker tell training samples from unseen ones?

Protocol of the CAMDA/ELSA health-privacy challenge (PMBio/Health-Privacy-Challenge,
``src/mia/``): the *members* are the generator's training samples, the
*non-members* real samples it never saw. A seeded half of the non-members is
given to the attacker as its *reference* data (a sample of the population
without the members); the other half is scored beside the members. Each attack
turns the released synthetic set (and the reference) into one membership score
per scored record, higher meaning "more likely a member"; the audit reports the
ROC-AUC of those scores (members positive) and the TPR at 1% FPR.

Attacks (:data:`ATTACKS`):

- ``gan_leaks``: GAN-leaks, full black-box (Chen et al. 2020, "GAN-Leaks: A
  Taxonomy of Membership Inference Attacks against Generative Models", CCS):
  score = minus the Euclidean distance to the closest synthetic record.
- ``gan_leaks_cal``: GAN-leaks calibrated (same paper, section 5.4): the same
  distance minus the distance to the closest record of a reference model. The
  reference "model" here is the attacker's reference data itself, as in the
  DOMIAS baselines (``domias.baselines.GAN_leaks_cal``) the challenge runs:
  score = d(x, reference) - d(x, synthetic).
- ``domias``: DOMIAS (van Breugel et al. 2023, "Membership Inference Attacks
  against Synthetic Data through Overfitting Detection", AISTATS): score = log
  p_synthetic(x) - log p_reference(x), both densities Gaussian KDEs
  (scipy ``gaussian_kde``, Scott's bandwidth rule) in one PCA space fitted on
  the reference data. A set whose density cannot be estimated there (one record
  repeated: a singular covariance) makes DOMIAS not computable: its figures are
  NaN, with a warning, never a stand-in value. Any other attack, or DOMIAS
  once computed, whose scores are not all finite is refused
  (:class:`~cvae_ray.errors.InvalidDataError`), never left out of the worst case.
- ``logan``: LOGAN, discriminator attack with auxiliary data (Hayes et al. 2019,
  "LOGAN: Membership Inference Attacks Against Generative Models", PoPETs;
  as ``domias.baselines.LOGAN_D1``): an MLP (2 x 256 ReLU, scikit-learn) trained
  to tell synthetic (1) from reference (0) records, equal numbers of each, in
  the same PCA space; score = its synthetic probability.

The distance attacks work in the space given (the report and the benchmark pass
the model's log, per-gene standardised space), where a copied training sample is
a near-exact match; DOMIAS and LOGAN use the PCA space because density
estimates and a small classifier need few dimensions.

AUC: 0.5 means the attack cannot tell members from non-members (no leak), 1 a
perfect attack; lower is better for privacy. TPR at 1% FPR: the share of members
caught when at most 1% of the scored non-members are wrongly accused; about 0.01
means no leak. Its resolution is one non-member: with n scored non-members the
smallest non-zero FPR is 1/n, so below 100 of them the figure is the TPR at FPR 0.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy.stats import gaussian_kde
from sklearn.decomposition import PCA
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import roc_auc_score, roc_curve
from sklearn.neural_network import MLPClassifier

from cvae_ray.errors import InvalidDataError
from cvae_ray.metrics.fidelity import check_matrix, check_same_genes
from cvae_ray.metrics.privacy import _nearest

__all__ = ["ATTACKS", "MIN_MEMBERS", "MIN_NON_MEMBERS", "MIN_SYNTHETIC", "PCA_COMPONENTS",
           "TARGET_FPR", "attack_scores", "membership_audit", "tpr_at_fpr"]

#: The attacks, in report order.
ATTACKS = ("gan_leaks", "gan_leaks_cal", "domias", "logan")
#: FPR at which the audit reports the TPR (the challenge reports 0.1 and 0.01).
TARGET_FPR = 0.01
#: PCA components of the DOMIAS and LOGAN space (capped by the reference size and genes).
PCA_COMPONENTS = 20
#: Fewest non-members: half become the reference, half are scored; each half
#: needs enough rows for a PCA and a KDE of a few dimensions.
MIN_NON_MEMBERS = 20
MIN_MEMBERS = 10
MIN_SYNTHETIC = 10
# LOGAN's discriminator, as domias.baselines.LOGAN_D1 (2 x 256 ReLU, Adam 1e-3).
_LOGAN_HIDDEN = (256, 256)
_LOGAN_MAX_ITER = 100  # epochs; bounds its time to about a second at 1,000 rows
# A PCA component along which the reference's sd is below this share of its largest
# absolute value is round-off (float64: ~1e-16), not variation: it is left out of the
# DOMIAS and LOGAN space.
_ROUNDOFF = 1e-8


def tpr_at_fpr(labels: np.ndarray, scores: np.ndarray, fpr: float = TARGET_FPR) -> float:
    """Highest TPR of a score threshold whose FPR is at most ``fpr`` (scikit-learn roc_curve).

    Args:
        labels: 1 for members, 0 for non-members.
        scores: Membership scores, higher = more likely a member.
        fpr: Largest false-positive rate allowed, in [0, 1].

    Returns:
        The TPR in [0, 1].
    """
    false_pos, true_pos, _ = roc_curve(labels, scores)
    return float(true_pos[false_pos <= fpr + 1e-12].max())


def _pca_space(reference: np.ndarray, n_synthetic: int, n_components: int, seed: int) -> PCA:
    # n - 2 components at most: gaussian_kde needs more points than dimensions
    # for a non-singular covariance.
    k = max(1, min(n_components, len(reference) - 2, n_synthetic - 2, reference.shape[1]))
    pca = PCA(n_components=k, random_state=seed).fit(reference)
    # And only directions the reference varies along: duplicated reference records span
    # fewer, and along the others the reference density (a KDE) is singular.
    floor = (_ROUNDOFF * float(np.abs(reference).max())) ** 2
    varied = int(np.sum(pca.explained_variance_ > floor))
    if 0 < varied < k:
        pca = PCA(n_components=varied, random_state=seed).fit(reference)
    return pca


def _domias(queries: np.ndarray, synthetic: np.ndarray, reference: np.ndarray
            ) -> np.ndarray | None:
    """DOMIAS scores, or None (with a warning saying why) when a density cannot be estimated."""
    densities = []
    for name, data, advice in (
            ("synthetic set", synthetic, "check the generator for constant or duplicated output"),
            ("reference data", reference, "the non-members hardly differ from each other")):
        try:
            densities.append(gaussian_kde(data.T, bw_method="scott"))
        except np.linalg.LinAlgError:
            warnings.warn(
                f"DOMIAS is not computable: the {name} is degenerate in the reference PCA "
                f"space (its covariance in those {data.shape[1]} dimensions is singular), so "
                f"its density cannot be estimated ({advice}). mia_auc_domias and "
                "mia_tpr_1pct_domias are NaN; the worst-case mia_auc and mia_tpr_1pct are "
                "taken over the other attacks.", stacklevel=4)
            return None
    # logpdf, not pdf: densities in 20 dimensions underflow to 0.
    p_synthetic, p_reference = densities
    return p_synthetic.logpdf(queries.T) - p_reference.logpdf(queries.T)


def _logan(queries: np.ndarray, synthetic: np.ndarray, reference: np.ndarray,
           rng: np.random.Generator, seed: int) -> np.ndarray:
    n = min(len(synthetic), len(reference))
    x = np.vstack([synthetic[rng.permutation(len(synthetic))[:n]],
                   reference[rng.permutation(len(reference))[:n]]])
    y = np.r_[np.ones(n, dtype=int), np.zeros(n, dtype=int)]
    clf = MLPClassifier(hidden_layer_sizes=_LOGAN_HIDDEN, max_iter=_LOGAN_MAX_ITER,
                        random_state=seed)
    with warnings.catch_warnings():
        # An unconverged discriminator is still the attacker's discriminator.
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(x, y)
    return clf.predict_proba(queries)[:, 1]


def attack_scores(queries: np.ndarray, synthetic: np.ndarray, reference: np.ndarray, *,
                  n_components: int = PCA_COMPONENTS, seed: int = 0
                  ) -> dict[str, np.ndarray | None]:
    """Membership score of each query record under every attack of :data:`ATTACKS`.

    Args:
        queries: Records to score x genes.
        synthetic: The released synthetic set x genes.
        reference: The attacker's reference data (real non-members) x genes.
        n_components: PCA components for DOMIAS and LOGAN (capped at
            ``len(reference) - 2``, ``len(synthetic) - 2``, the gene count and the
            number of directions the reference varies along).
        seed: Seed of the PCA solver, LOGAN's balancing draw and its MLP.

    Returns:
        ``{attack: scores}``, one float per query, higher = more likely a member. The
        ``domias`` entry is None (not computable), with a warning saying why, when the
        synthetic set or the reference data is so degenerate in the PCA space (e.g. one
        record repeated) that its density cannot be estimated.
    """
    d_synthetic = _nearest(synthetic, queries)
    d_reference = _nearest(reference, queries)
    pca = _pca_space(reference, len(synthetic), n_components, seed)
    q, s, r = (pca.transform(x) for x in (queries, synthetic, reference))
    rng = np.random.default_rng(seed)
    return {"gan_leaks": -d_synthetic,
            "gan_leaks_cal": d_reference - d_synthetic,
            "domias": _domias(q, s, r),
            "logan": _logan(q, s, r, rng, seed)}


def membership_audit(members: np.ndarray, non_members: np.ndarray, synthetic: np.ndarray, *,
                     n_components: int = PCA_COMPONENTS, seed: int = 0) -> dict[str, float]:
    """Run every membership-inference attack against one synthetic set.

    A seeded random half of ``non_members`` (``len // 2`` rows) becomes the
    attacker's reference data; the rest are scored beside all ``members``. See
    the module docstring for the attacks and their sources.

    Args:
        members: The generator's training samples x genes.
        non_members: Real samples x genes the generator never saw (at least
            :data:`MIN_NON_MEMBERS`).
        synthetic: The released synthetic set x genes (release it at the
            training set's size, as a shared cohort would be).
        n_components: PCA components for DOMIAS and LOGAN.
        seed: Seed of the reference split and of every attack.

    Returns:
        ``mia_auc_<attack>`` and ``mia_tpr_1pct_<attack>`` per attack, then
        ``mia_auc`` and ``mia_tpr_1pct``: the worst case (maximum) over attacks,
        each maximum taken separately. Also ``n_members_scored``,
        ``n_non_members_scored`` and ``n_reference``. An attack that cannot be
        computed (DOMIAS on a synthetic set or reference data so degenerate that
        its density cannot be estimated, see :func:`attack_scores`) has NaN
        figures, not chance-level ones, and a warning says why; the worst case is
        then taken over the other attacks.

    Raises:
        InvalidDataError: Not 2-D, NaN/inf values, gene counts that differ,
            fewer than :data:`MIN_MEMBERS` members, :data:`MIN_NON_MEMBERS`
            non-members or :data:`MIN_SYNTHETIC` synthetic samples, or an attack
            whose scores are not all finite (naming it).
    """
    members = check_matrix(members, "members", min_samples=MIN_MEMBERS)
    non_members = check_matrix(non_members, "non_members", min_samples=MIN_NON_MEMBERS)
    synthetic = check_matrix(synthetic, "synthetic", min_samples=MIN_SYNTHETIC)
    check_same_genes(members=members, non_members=non_members, synthetic=synthetic)
    order = np.random.default_rng(seed).permutation(len(non_members))
    reference = non_members[np.sort(order[: len(order) // 2])]
    scored = non_members[np.sort(order[len(order) // 2:])]
    queries = np.vstack([members, scored])
    labels = np.r_[np.ones(len(members), dtype=int), np.zeros(len(scored), dtype=int)]
    scores = attack_scores(queries, synthetic, reference, n_components=n_components, seed=seed)
    out: dict[str, float] = {}
    run = [a for a in ATTACKS if scores[a] is not None]
    for attack in run:
        # Only "not computable" (None, said by a warning) leaves an attack out of
        # the worst case; a non-finite score is a fault, never a quiet omission.
        bad = int(np.sum(~np.isfinite(scores[attack])))
        if bad:
            raise InvalidDataError(
                f"the {attack} attack gave {bad} non-finite membership score(s) of "
                f"{len(queries)}; its AUC is undefined and leaving it out would understate the "
                "worst case. Check the data's scale (values near the float64 limit overflow "
                "the distances).")
    for attack in ATTACKS:
        computed = attack in run
        out[f"mia_auc_{attack}"] = (float(roc_auc_score(labels, scores[attack]))
                                    if computed else float("nan"))
        out[f"mia_tpr_1pct_{attack}"] = (tpr_at_fpr(labels, scores[attack])
                                         if computed else float("nan"))
    out["mia_auc"] = max(out[f"mia_auc_{a}"] for a in run)
    out["mia_tpr_1pct"] = max(out[f"mia_tpr_1pct_{a}"] for a in run)
    out.update(n_members_scored=float(len(members)), n_non_members_scored=float(len(scored)),
               n_reference=float(len(reference)))
    return out
