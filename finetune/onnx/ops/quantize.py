"""quantize converters (being written)."""
