"""Built-in hardening trainers."""
