"""Sequential edit runs: the runner (``SequentialEditor``), its crash-safe journal, the results
schema (``results.json``) and the plots."""
