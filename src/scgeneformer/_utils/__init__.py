"""Small utilities of every layer: atomic writes and safe reads, optional imports, progress bars, parallelism."""
