"""Inference backends behind one small protocol (protocol.Engine), chosen and built by the registry.

The engines layer sits above decoding and below the scan: it may import codescan.core,
codescan.model and codescan.weights, never the scan, output or CLI code."""
