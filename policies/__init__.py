"""The policy language: a YAML file that turns a certainty score into an action.

Pure: imports nothing from router/, so a policy can be checked and explained anywhere.
"""

from policies.engine import Confidences, Decision, RequestFacts, decide
from policies.loader import DEFAULT_POLICY_PATH, PolicyError, load_policy
from policies.schema import (
    Action,
    Cooldown,
    Cost,
    LiteLLMTarget,
    LocalTarget,
    OpenAITarget,
    Policy,
    RemoteTarget,
    Rule,
    Target,
)

__all__ = [
    "DEFAULT_POLICY_PATH",
    "Action",
    "Confidences",
    "Cooldown",
    "Cost",
    "Decision",
    "LiteLLMTarget",
    "LocalTarget",
    "OpenAITarget",
    "Policy",
    "PolicyError",
    "RemoteTarget",
    "RequestFacts",
    "Rule",
    "Target",
    "decide",
    "load_policy",
]
