"""Stage 5: Integrated Gradients over the ensemble and the report."""
