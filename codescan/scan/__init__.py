"""A scan as a job: the plan that resolves the options once, the verdict maker, the local executor
and the Ray executor. Imports every layer below it, codescan.engines included.
"""
