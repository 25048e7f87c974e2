"""The spectral core: restraint functions F, operators for Δ without forming it, the certified
threshold SVD (block Krylov), the factored accumulated update, and the float64 references.

Nothing here knows models or editors; ``prune_fast.restrain`` and ``prune_fast.tracker`` build on it.
"""
