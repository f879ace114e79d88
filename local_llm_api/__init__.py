"""local-llm-api: local LLMs behind the OpenAI HTTP API."""

__version__ = "0.1.0"
