"""attention converters (being written)."""
