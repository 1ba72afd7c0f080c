"""qvq-serving."""
