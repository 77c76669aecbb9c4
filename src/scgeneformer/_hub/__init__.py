"""Published files: the checkpoint and dictionary registry, and their download (pooch, sha256-checked, cached)."""
