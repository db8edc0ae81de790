"""cvae_ray: conditional-VAE synthetic gene-expression data, tuned, served and generated with Ray.

The core modules (config, data, preprocess, model, loop, metrics, bundle) are
plain numpy/pandas/torch and never import Ray; the Ray parts (tuning, serve,
cohorts) sit at the edge and meet at the model bundle.
"""

from __future__ import annotations

__version__ = "0.1.0"
