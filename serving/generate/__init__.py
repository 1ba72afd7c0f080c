"""The GPU tier: the QVQGenerator deployment, prompt rendering, the engine behind its
protocol (vLLM), reasoning operations on the token stream, and stream coalescing."""
