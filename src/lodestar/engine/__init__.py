"""The engine model: a vLLM v1-like instance (scheduler, paged KV cache with prefix caching) and its latency model."""
