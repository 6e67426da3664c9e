"""The policy language: a YAML file that turns a certainty score into an action.

Pure: imports nothing from router/, scorers/, localmodel/ or train/, so a policy can be checked and
explained anywhere. Actions (policies/actions/), conditions (policies/conditions/) and target kinds
(policies/targets/) register themselves; layers above add checks with `policy_check` (policies/loader.py).
"""

from policies.actions import ACTIONS, Action, Decision, action
from policies.checks import Location
from policies.conditions import CONDITIONS, Condition, When
from policies.engine import decide
from policies.facts import BEST, Confidences, RequestFacts
from policies.loader import DEFAULT_POLICY_PATH, PolicyError, load_policy, policy_check
from policies.schema import Policy, Rule
from policies.targets import (
    TARGET_KINDS,
    Cooldown,
    Cost,
    LiteLLMTarget,
    LocalTarget,
    OpenAITarget,
    RemoteTarget,
    Target,
)

__all__ = [
    "ACTIONS",
    "BEST",
    "CONDITIONS",
    "DEFAULT_POLICY_PATH",
    "TARGET_KINDS",
    "Action",
    "Condition",
    "Confidences",
    "Cooldown",
    "Cost",
    "Decision",
    "LiteLLMTarget",
    "LocalTarget",
    "Location",
    "OpenAITarget",
    "Policy",
    "PolicyError",
    "RemoteTarget",
    "RequestFacts",
    "Rule",
    "Target",
    "When",
    "action",
    "decide",
    "load_policy",
    "policy_check",
]
