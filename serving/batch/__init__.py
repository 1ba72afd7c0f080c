"""OpenAI-compatible batch jobs: validation, durable state, and the runner."""
