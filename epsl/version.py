"""epsl's version: in every checkpoint's metadata and every result's provenance, where it
decides reuse (a result made by another release is recomputed)."""

__version__ = "0.3.0"

__all__ = ["__version__"]
