"""Shared by every wing: the config schema, user errors, atomic writes, file modes, provenance, run records."""
