"""rayprop cluster: connecting to Ray and placing shard workers."""
