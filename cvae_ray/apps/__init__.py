"""The Ray applications: Train worker loop, Tune search, Serve, synthetic cohorts (Ray Data).
The only folder of the package that imports Ray (their Ray-free parts sit beside them)."""
