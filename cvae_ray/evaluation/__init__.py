"""Evaluation: the report on a bundle, the generator benchmark and the baseline generators.
Never imports Ray."""
