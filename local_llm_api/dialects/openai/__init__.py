"""OpenAI's chat completions, completions, embeddings and models: protocol models, routes, translation."""
