"""The stages of the request path, in order: admission, scoring, deciding, answering, shaping, recording,
capturing (router/service.py runs a request through them)."""
