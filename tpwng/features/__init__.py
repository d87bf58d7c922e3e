"""Features: video decoding, CLIP preprocessing and extraction, released features, the HDF5 feature
store and its contract.
"""
