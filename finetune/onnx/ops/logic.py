"""logic converters (being written)."""
