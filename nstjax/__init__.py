"""nstjax: neural style transfer in JAX/Flax: Gatys optimization and feed-forward networks."""

__version__ = "0.1.0"
