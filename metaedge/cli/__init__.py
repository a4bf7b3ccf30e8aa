"""Command-line interface: one module per command, parsing and printing only."""
