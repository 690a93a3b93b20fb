"""rayprop cluster: connecting to Ray (local, `auto`, `ray://`), auth tokens, Ray Jobs submission."""
