"""The gateway: OpenAI-compatible HTTP API, the provider hub and the explorer."""
