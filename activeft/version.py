"""The package version (one place; the package and every record header read it here)."""

__version__ = "0.1.0"
