"""POST /v1/responses, OpenAI's Responses API, on the chat path: the request is translated to the chat
conversation it asks about (request.py, translate.py), scored and routed by the policy as chat is, and either
passed through as it came to a target that speaks the API (router/targets/responses_upstream.py) or
answered as chat and translated back, a stream into the Responses events (events.py). Conversations are kept
per tenant for previous_response_id and GET/DELETE /v1/responses/{id} (store.py); endpoint.py joins them.
"""
