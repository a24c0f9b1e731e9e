"""The release, in one place below everything that records it (headers, bundles, reports)."""

__version__ = "0.1.0"
