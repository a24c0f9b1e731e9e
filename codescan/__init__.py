"""codescan: tells which images are AI-generated, with the CoDE encoder (ECCV 2024)."""

__version__ = "0.1.0"
