"""Request fields that steer litellm itself, not the model: a target's `extra_fields` may not name them.

litellm takes every keyword argument of `completion()`; some are sent on to the provider as request fields,
others decide where and how litellm calls (`api_base`, `fallbacks`, `extra_headers`, `mock_response`, ...).
A client must never reach the second kind: with `fallbacks` or `api_base` it could send the operator's key
to a host of its own. This module is pure (no litellm import, which takes seconds), so a policy is checked
anywhere; tests/test_forwarding.py checks it against the installed litellm's own lists
(`litellm.types.utils.all_litellm_params`, `completion()`'s parameters and the `kwargs` it reads).
"""

from __future__ import annotations

import re

ROUTER_FIELDS = frozenset({"model", "messages", "stream"})
"""Set by the router for each target, never taken from a client."""

CONTROL_KEYWORDS = frozenset(
    {
        # where the call goes, with which credentials
        "api_base", "base_url", "api_key", "api_version", "custom_llm_provider", "deployment_id",
        "organization", "model_list", "azure", "azure_ad_token", "azure_ad_token_provider", "tenant_id",
        "client_id", "client_secret", "azure_username", "azure_password", "azure_scope", "region_name",
        "use_litellm_proxy", "use_xai_oauth", "use_in_pass_through", "use_chat_completions_api",
        "litellm_credential_name", "configurable_clientside_auth_params", "ssl_verify", "client",
        "shared_session", "use_client", "provider_specific_header", "data_residency", "allowed_model_region",
        # what is sent besides the request body
        "headers", "extra_headers", "extra_body", "extra_query",
        # retries, fallbacks and time
        "fallbacks", "context_window_fallbacks", "context_window_fallback_dict", "num_retries",
        "max_retries", "retry_policy", "retry_strategy", "timeout", "request_timeout", "stream_timeout",
        "client_side_timeout", "force_timeout", "cooldown_time", "fallback_depth", "max_fallbacks",
        "attempted_targets", "fastest_response", "keepalive_seconds", "allow_client_keepalive_override",
        # answers that never reach the model
        "mock_response", "mock_tool_calls", "mock_timeout", "mock_delay", "caching", "cache", "cache_key",
        "preset_cache_key", "caching_groups", "ttl", "no-log",
        # logging, callbacks, bookkeeping
        "metadata", "tags", "guardrails", "callbacks", "success_callback", "failure_callback",
        "logger_fn", "verbose", "id", "completion_call_id", "model_info", "model_config", "base_model",
        "hf_model_name", "secret_fields", "user_api_key_end_user_id", "max_budget", "budget_duration",
        "rpm", "tpm", "itpm", "otpm", "max_parallel_requests", "default_api_key_rpm_limit",
        "default_api_key_tpm_limit", "weight", "order", "routing_strategy", "enable_tag_filtering",
        # how litellm rewrites the request
        "drop_params", "additional_drop_params", "allowed_openai_params", "model_alias_map",
        "custom_prompt_dict", "roles", "initial_prompt_value", "final_prompt_value", "bos_token",
        "eos_token", "supports_system_message", "ensure_alternating_roles", "user_continue_message",
        "assistant_continue_message", "merge_reasoning_content_in_choices", "enable_prompt_caching",
        "enable_json_schema_validation", "disable_add_transform_inline_image_block",
        "model_file_id_mapping", "prompt_id", "prompt_variables", "prompt_version", "prompt_label",
        "prompt_environment", "stream_response", "complete_response", "cost_per_query", "rust",
        "search_tool_name", "max_agentic_loops", "include_server_side_tool_invocations",
        # internal switches of litellm's own entry points
        "acompletion", "aimg_generation", "atext_completion", "text_completion", "aembedding",
        "allm_passthrough_route", "async_call", "self", "original_function", "optional_params",
        "fake_stream", "is_async", "aws_bedrock_client", "oci_signer",
        "auto_router_config", "auto_router_config_path", "auto_router_default_model",
        "auto_router_embedding_model", "auto_router_max_input_chars", "auto_router_routing_compression",
        "auto_router_model_compression", "complexity_router_config", "complexity_router_default_model",
        "adaptive_router_config", "adaptive_router_default_model", "quality_router_config",
        "quality_router_default_model", "s3_bucket_name", "s3_region_name", "s3_output_bucket_name",
        "bedrock_tags", "turn_off_message_logging", "output_vector_size",
    }
)  # fmt: skip

# Families: a leading underscore (litellm's private switches), litellm's and proxies' own keys, cloud
# credentials and endpoints, logging integrations that would ship the conversation to a host of the
# client's choosing (langfuse_host, ...), and litellm's cost overrides.
_PREFIXES = (
    "_", "litellm_", "proxy_", "mock_", "api_", "aws_", "azure_", "vertex_", "vertexai_", "gcs_",
    "google_", "oci_", "watsonx_", "gigachat_", "databricks_", "sagemaker_", "predibase_", "nvcf_",
    "bedrock_", "langfuse_", "langsmith_", "humanloop_", "arize_", "posthog_", "wandb_", "weave_", "dd_",
    "newrelic_", "lunary_", "helicone_", "braintrust_", "opik_", "mlflow_", "auto_router_",
    "complexity_router_", "adaptive_router_", "quality_router_", "user_api_key",
)  # fmt: skip
# Words that mark credentials, endpoints, retries, costs or callbacks wherever they appear in a name.
_WORDS = re.compile(
    r"(^|_)(key|keys|token|secret|password|credential|credentials|url|uri|endpoint|host|header|headers|"
    r"retry|retries|timeout|fallback|fallbacks|callback|callbacks|cost|costs|proxy|base|region|project|"
    r"location|tenant|client|pricing|uplift)($|_)|apikey|api_key"
)


def control_keyword(name: str) -> bool:
    """Whether litellm may act on `name` itself (where or how it calls), not only send it to the model."""
    lowered = name.lower()
    return lowered in CONTROL_KEYWORDS or lowered.startswith(_PREFIXES) or bool(_WORDS.search(lowered))


def forwarding_problem(name: str) -> str | None:
    """Why a target may not declare `name` among its extra_fields; None when it may."""
    if not name:
        return "an extra field needs a name"
    if name in ROUTER_FIELDS:
        return f"'{name}' is set by the router, not taken from clients"
    if control_keyword(name):
        return (
            f"'{name}' is a litellm control keyword (it steers where or how litellm calls, with which "
            "credentials, or what it logs), so clients may never send it"
        )
    return None
