"""Frozen-backbone features: the inference engines (onnxruntime / eager torch, `engines`), the HDF5
feature cache (`cache`) and extraction (`extract`). Imports runtime, data, backbones, runs."""
