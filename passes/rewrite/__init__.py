"""Rewrite: remove planned units physically, compensate or refit what reads them, then optimise."""
