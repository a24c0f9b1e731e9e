"""Looking at verdicts: the HTML review page, its assets, and thumbnails made in confined workers.
Imports every layer below it.
"""
