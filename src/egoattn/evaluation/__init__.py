"""Evaluation: metrics and their files (metrics), figures (plots), running a trained model over a
split (evaluate) and one table over many runs (compare).

Import the submodules directly; this package imports nothing so that `egoattn compare` does not
load torch.
"""
