"""indexing converters (being written)."""
