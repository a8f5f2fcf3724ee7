"""control_flow converters (being written)."""
