"""Data layer: decoding, synthetic data, preparation, flow, clip storage and loading."""
