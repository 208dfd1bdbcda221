"""cimguard's built-in plugins.

Installed as ``cimguard_plugins``.  Each module here uses only the public hooks in
:mod:`cimguard.hookspecs`, exactly as a third-party plugin would.
"""
