"""What a file says about its own origin: metadata containers, generator parameters, C2PA
manifests, the SD watermark. Imports the layers below it (core, model, weights, inputs).
"""
