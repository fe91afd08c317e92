"""Feed-forward training: data, the sharded train step, checkpoints, signals, the loop."""
