"""Stage 3: the training config, losses, early stopping, checkpoints, batching and the fold trainer."""
