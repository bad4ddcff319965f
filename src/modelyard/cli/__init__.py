"""The ``modelyard`` command: thin Typer commands over the client."""
