"""cvae_ray: conditional-VAE synthetic gene-expression data, tuned, served and generated with Ray.

The layers and what each may import are in ``cvae_ray/LAYERS.md``: data in, metrics and
the pure-torch model never import Ray; the Ray applications (``apps/``) and the evaluation
(``evaluation/``) meet only at the model bundle.
"""

from __future__ import annotations

__version__ = "0.1.0"
