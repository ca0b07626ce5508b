"""Allocation: how many units each group loses under a target — ratios, params, FLOPs, measured sensitivity,
measured latency."""
