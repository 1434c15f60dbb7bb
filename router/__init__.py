"""llm-router: an OpenAI-compatible LLM gateway on aiohttp."""

__version__ = "0.1.0"
