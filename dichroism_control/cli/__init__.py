"""The `dichroism` command line: one module per command group, thin bodies."""
