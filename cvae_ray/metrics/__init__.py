"""Plain metric functions comparing real and synthetic data, and their one registry
(:mod:`cvae_ray.metrics.registry`: range and direction of every metric). No torch, no Ray."""
