"""Data: sources, taxonomy, preparation and validation."""
