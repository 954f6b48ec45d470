"""Globus Compute functions (run at NERSC; each MODULE is self-contained and registered whole)."""
