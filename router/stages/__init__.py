"""The stages of the request path, in order: admission, scoring, deciding, answering, shaping, recording
(router/service.py runs a request through them)."""
