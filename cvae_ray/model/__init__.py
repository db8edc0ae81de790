"""The pure-torch model: the CVAE, its draws, latent prior and noise gap, the one-process
training loop, fitting, and the model bundle (the contract every application loads)."""
