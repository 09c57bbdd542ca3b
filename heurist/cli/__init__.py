"""The ``heurist`` command (typer + rich): one module per command group, errors printed without a traceback."""
