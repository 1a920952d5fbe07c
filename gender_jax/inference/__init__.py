"""Inference: the bundle (what a trained run ships), its weights files, the one Predictor that
classifies crops and photos' faces alike, and `predict` (folders → CSV)."""
