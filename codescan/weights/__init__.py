"""Weight bundles: the store under $CODESCAN_HOME, reading and verifying bundles and variants,
installing the official weights (the restricted unpickler, the capped inflaters, the head
conversion child). Imports codescan.core and codescan.model.
"""
