"""Model architectures, the registry and :func:`build_model`."""
