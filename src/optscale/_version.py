"""The package version, importable without importing the package's numeric core."""

__version__ = "0.1.0"
