"""Tests for the local Globus Flows interpreter (engine, expressions, JSONPath)."""
