"""Reference model builders (torch, optional) and the packaged demo model (no torch needed)."""
