"""The model as arithmetic: the encoder, the crop geometry, the heads and the scikit-learn
estimators they are converted from. Imports only codescan.core.
"""
