"""Where results go: the reporters (JSONL, JSON, CSV, Parquet, shards), --resume, the progress
line and one-line messages for people. Imports the layers below it; in practice codescan.core.
"""
