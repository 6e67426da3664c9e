"""confidence-router: the OpenAI-compatible service and its command line."""
