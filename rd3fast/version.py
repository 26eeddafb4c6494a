"""rd3fast's version: one definition, read by the package, the results files and pyproject.toml."""
__version__ = "0.1.0"
