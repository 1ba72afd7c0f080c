"""Model checkpoints built or located by qvq-serving."""
