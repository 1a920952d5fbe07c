"""Data: sources (one record schema), the grain input pipeline, and preprocessing."""
