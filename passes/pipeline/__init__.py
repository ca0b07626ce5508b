"""The whole job in pipeline order: load → analyze → score → allocate → rewrite → verify → save."""
