"""Data-free weight quantization applied after pruning: schemes as data, numerics as pure functions."""
