"""strings converters (being written)."""
