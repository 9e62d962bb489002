"""Stage 4: metrics and the fold ensemble."""
