"""Inputs as entries, in the documented order: the walk, URIs, archives and Parquet files listed
by confined readers, and every read of a file's bytes (pinned to what the listing saw).
Imports codescan.core, codescan.model and codescan.weights (the store's location).
"""
