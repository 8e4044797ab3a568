"""Command-line interface (``fedstrat``)."""
