"""Local backend: run flow definitions on this machine (engine, providers, fake HPSS)."""
