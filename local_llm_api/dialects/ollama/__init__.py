"""Ollama's native API under /api (beside, never inside, /api/v1)."""
