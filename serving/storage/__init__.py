"""Object storage behind one small interface (S3-compatible or a local directory)."""
