"""Evaluation: datasets to score, the metrics and their intervals (stats.py), calibration,
the report and its plots, and data cleaning (duplicates, likely label errors)."""
