"""A built-in SIMULATED multi-tissue bulk RNA-seq dataset, for demos and tests only.

Nothing here is real data: it exists so that ``make demo`` and the tests run on
a machine with no data. Real data always comes from a file the user names.

Generative story (per sample ``s`` of tissue ``t`` and source ``b``, gene ``g``):

* a baseline log-expression per gene, log-normal across genes;
* tissue programs: each tissue up-regulates its own block of marker genes and
  shifts every gene slightly;
* correlated gene modules: ``K`` latent module activities per sample (with a
  tissue-specific mean), each loading on a random set of genes, so genes in a
  module co-vary within a tissue;
* a source effect: tumour samples up-regulate a proliferation module, TCGA
  samples get a small batch shift;
* counts are negative-binomial around ``library_size * softmax(log_mean)``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from cvae_ray.config import DEFAULT_SEED, DEMO_GENES, DEMO_SAMPLES

DEMO_TISSUES = ("lung", "liver", "kidney", "breast", "colon", "thyroid")
DEMO_SOURCES = ("GTEx", "TCGA-normal", "TCGA-tumor")
SIMULATED_NOTE = "SIMULATED demo dataset (cvae_ray.data.simulate), not real expression data"


def simulate_cohort(n_samples: int = DEMO_SAMPLES, n_genes: int = DEMO_GENES, *,
                    n_modules: int = 12,
                    tissues: tuple[str, ...] = DEMO_TISSUES,
                    sources: tuple[str, ...] = DEMO_SOURCES, dispersion: float = 0.1,
                    seed: int = DEFAULT_SEED) -> pd.DataFrame:
    """Simulate a bulk RNA-seq dataset of counts with tissue and source labels.

    Args:
        n_samples: Number of samples.
        n_genes: Number of genes (named ``SIM0001``...).
        n_modules: Number of co-regulated gene modules.
        tissues: Tissue labels.
        sources: Source labels; a name containing ``tumor`` gets the tumour programme.
        dispersion: Negative-binomial dispersion (variance = mu + dispersion * mu^2).
        seed: Seed; the same arguments give the same dataset.

    Returns:
        A table with ``sample_id``, ``tissue``, ``source`` and one count column per gene.
    """
    rng = np.random.default_rng(seed)
    n_t = len(tissues)
    baseline = rng.normal(3.0, 1.5, n_genes)
    tissue_shift = rng.normal(0.0, 0.3, (n_t, n_genes))
    markers = np.array_split(rng.permutation(n_genes), n_t + 1)
    for t in range(n_t):
        tissue_shift[t, markers[t][: max(1, len(markers[t]) // 2)]] += rng.uniform(1.5, 3.0)
    loadings = np.zeros((n_modules, n_genes))
    for k in range(n_modules):
        members = rng.choice(n_genes, size=max(3, n_genes // 10), replace=False)
        loadings[k, members] = rng.normal(0.0, 0.6, len(members))
    module_mean = rng.normal(0.0, 0.8, (n_t, n_modules))
    prolif = rng.choice(n_genes, size=max(3, n_genes // 15), replace=False)
    batch = rng.normal(0.0, 0.15, n_genes)

    tissue_of = rng.integers(0, n_t, n_samples)
    source_of = rng.integers(0, len(sources), n_samples)
    activity = module_mean[tissue_of] + rng.normal(0.0, 1.0, (n_samples, n_modules))
    log_mu = baseline + tissue_shift[tissue_of] + activity @ loadings
    for j, name in enumerate(sources):
        rows = source_of == j
        if "tumor" in name.lower():
            log_mu[np.ix_(rows, prolif)] += 1.5
        if name.upper().startswith("TCGA"):
            log_mu[rows] += batch
    library = rng.lognormal(np.log(2e6), 0.2, n_samples)[:, None]
    weights = np.exp(log_mu - log_mu.max(axis=1, keepdims=True))
    mu = library * weights / weights.sum(axis=1, keepdims=True)
    # NB as a gamma-Poisson mixture: shape 1/dispersion, mean mu.
    counts = rng.poisson(rng.gamma(1.0 / dispersion, mu * dispersion)).astype(np.float32)
    genes = [f"SIM{i + 1:04d}" for i in range(n_genes)]
    table = pd.DataFrame(counts, columns=genes)
    table.insert(0, "source", [sources[j] for j in source_of])
    table.insert(0, "tissue", [tissues[t] for t in tissue_of])
    table.insert(0, "sample_id", [f"SIM-{i:05d}" for i in range(n_samples)])
    return table


def write_demo_cohort(path: str, **kwargs) -> str:
    """Write :func:`simulate_cohort` to Parquet, recording that it is simulated.

    Args:
        path: Output ``.parquet`` path.
        **kwargs: Passed to :func:`simulate_cohort`.

    Returns:
        The path written.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(simulate_cohort(**kwargs), preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                           b"cvae_ray.note": SIMULATED_NOTE.encode()})
    pq.write_table(table, path)
    return path
