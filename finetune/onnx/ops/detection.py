"""detection converters (being written)."""
