"""rayprop experiments: tracking, wiring config to pool to coordinator, and the CLI."""
