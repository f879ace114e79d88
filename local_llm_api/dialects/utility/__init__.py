"""Utility endpoints for RAG and agent builders: tokenize, detokenize, apply-template (llama.cpp's server's names
and shapes) and rerank (Jina / Cohere shape). Errors in the OpenAI envelope."""
