"""The bottom layer: the record schema, text and file-system helpers, the child processes
codescan starts, the version. Imports nothing of codescan's.
"""
