"""The ``cgn`` command: one entry point for every CGN process and the local sandbox."""
