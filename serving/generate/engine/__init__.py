"""Generation engines behind one small protocol (real vLLM in production and tests)."""
