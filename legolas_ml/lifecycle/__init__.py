"""The model lifecycle: artifacts on disk, retraining decisions, candidates and promotion."""
