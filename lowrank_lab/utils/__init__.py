"""Leaf utilities shared by every layer: timing, provenance of generated files, tables."""
