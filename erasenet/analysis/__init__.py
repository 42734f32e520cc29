"""Reproductions of the papers' analysis figures."""
