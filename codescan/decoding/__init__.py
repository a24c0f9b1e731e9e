"""Bytes to crops in killable, confined workers: the decoders and the crop-aware JPEG extension,
the per-file examination, the scan cache, the worker pool and the shared crop ring. Imports
the layers below it (core, model, weights, inputs, evidence).
"""
