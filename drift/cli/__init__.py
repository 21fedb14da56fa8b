"""The ``cordwatch`` command line: one thin module per command group (parse, call, format).
The only place typer is imported.
"""
