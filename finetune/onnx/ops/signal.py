"""signal converters (being written)."""
