"""Small helpers shared across the library (atomic file writes)."""
