"""Files in -> validated dataset -> model-ready arrays: reading, public download formats,
gene lists, splits, preprocessing, the simulated demo dataset. No torch, no Ray."""
