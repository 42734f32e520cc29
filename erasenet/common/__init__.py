"""Shared by every wing: config schema, errors, atomic writes, file modes, provenance, run records, locks, faults."""
