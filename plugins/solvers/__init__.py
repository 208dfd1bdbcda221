"""Built-in worst-case solvers."""
