"""The ingress tier: the OpenAI-compatible HTTP API (one module per resource), admission and
per-key limits, and the route plumbing they share. Runs on CPU nodes in the router; the chat
endpoint also runs in the generator replicas when they are the chat entry."""
