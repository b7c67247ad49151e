"""Scenario files: schema, loading and running."""
