"""Stage 7: the ensemble in service scores the conversations no human has reviewed."""
