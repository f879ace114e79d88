"""Constrained decoding (grammars from JSON schemas and tool signatures, applied as token masks) and log
probabilities, shared by both model backends. Built on llguidance; docs/structured-output.md says why."""
