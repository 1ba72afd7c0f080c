"""The CPU tier: image sources, safe decoding, the model's pixel grid, the preprocessed-image
cache and catalog, and the ImagePreprocessor deployment that runs them."""
