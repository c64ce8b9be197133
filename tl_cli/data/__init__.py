"""Data in: scanning a class-folder dataset and its split (`scan`), decoding and preprocessing images
(`preprocess`), and the threaded batch decoder (`decode`). Imports runtime."""
