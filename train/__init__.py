"""Training and head fitting (``codescan train``). Imports codescan; the scanner never imports this."""
