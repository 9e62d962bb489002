"""Stage 8: the label audit and the human review queue it fills."""
