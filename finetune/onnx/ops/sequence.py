"""sequence converters (being written)."""
