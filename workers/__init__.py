"""rayprop workers: reading example ranges and computing Eq. 12 shard sums on them."""
