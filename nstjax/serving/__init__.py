"""Serving trained networks: the artifact format, export formats, loading, media I/O."""
