"""Low-level array operations: fast convolution forms for XLA:CPU and padding helpers."""
