"""The ``chatbatch`` command line (typer). Nothing imports it."""
