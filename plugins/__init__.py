"""cimguard's built-in plugins.

Installed as ``cimguard_plugins``.  Each module here imports from cimguard only
:mod:`cimguard.plugin_api` (the public hooks, base classes and helpers), exactly as
a third-party plugin would; a test walks their imports to keep it so.
"""
