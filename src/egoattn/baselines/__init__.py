"""Handcrafted baselines of seed 000 Table II: pooled motion features (HOF, HMAG, MBH) + SVM / KNN."""

from egoattn.baselines.classify import class_scores, make_classifier, run_baseline
from egoattn.baselines.features import FeatureSpec, extract_features, parse_features

__all__ = ["FeatureSpec", "class_scores", "extract_features", "make_classifier", "parse_features", "run_baseline"]
