"""recurrent converters (being written)."""
