"""Static reports built from a run directory (read-only)."""
