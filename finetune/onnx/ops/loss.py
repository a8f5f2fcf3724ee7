"""loss converters (being written)."""
