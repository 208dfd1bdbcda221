"""Built-in device models."""
