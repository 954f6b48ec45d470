"""Globus Compute functions (run at NERSC; each is self-contained and registered from source)."""
