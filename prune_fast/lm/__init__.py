"""Language-model side of an edit run, knowing models but no editor: edit requests (CounterFact,
ZsRE), token sites and hooks (probes), scoring and evaluation, the real model's loader and its
shipped edit set and ability probes.
"""
