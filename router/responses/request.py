"""The Responses request the router accepts: `input` as a string or a list of items, each checked and written
in one canonical form, the form conversations are stored, translated to chat and sent upstream in.

Items: messages (`role` user, system, developer or assistant; `content` a string or a list of `input_text`,
`output_text` or `refusal` parts), `function_call` (a tool call the model made) and `function_call_output`
(its result). Other kinds (images, files, a hosted tool's calls, reasoning) are a 400: no target the router
translates for could read them. Tools are function tools, as the chat path forwards them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from router.schemas import check_json

Item = dict[str, Any]

ROLES = ("user", "system", "developer", "assistant")
PARTS = {"input_text": "text", "output_text": "text", "refusal": "refusal"}
"""A message's content part types, and the key holding each one's text."""
ITEM_FIELDS = {
    "message": {"type", "role", "content", "id", "status", "phase"},
    "function_call": {"type", "call_id", "name", "arguments", "id", "status"},
    "function_call_output": {"type", "call_id", "output", "id", "status"},
}
"""The fields each kind of item may have: a stored response's output items carry `id` and `status`, which
the canonical form leaves out (an upstream called with store: false knows no ids)."""
TOOL_FIELDS = frozenset({"type", "name", "description", "parameters", "strict"})
MAX_ITEMS = 2048


class ResponsesRequest(BaseModel):
    """The fields of OpenAI's Responses create request that the router can honour whichever target answers;
    any other is a 400 (router/responses/endpoint.py words it as OpenAI does)."""

    model_config = ConfigDict(extra="allow", strict=True)

    model: str = Field(min_length=1)
    input: str | list[dict[str, Any]]
    """A user message's text, or items; read as `items`, their canonical form."""
    instructions: str | None = None
    """A system message before the conversation, for this request alone (previous_response_id does not
    carry it over, as OpenAI's does not)."""
    max_output_tokens: int | None = Field(None, gt=0)
    tools: list[dict[str, Any]] | None = Field(None, max_length=128)
    tool_choice: Literal["auto", "none", "required"] | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    stream: bool = False
    store: bool = True
    """False: nothing is kept (no GET, no previous_response_id to it)."""
    metadata: dict[str, str] | None = Field(None, max_length=16)
    previous_response_id: str | None = Field(None, min_length=1, max_length=256)
    user: str | None = Field(None, max_length=256)

    _json = model_validator(mode="before")(check_json)

    @field_validator("input")
    @classmethod
    def _canonical_items(cls, given: str | list[dict[str, Any]]) -> object:
        if isinstance(given, str):
            return given
        if not given:
            raise ValueError("give at least one input item")
        if len(given) > MAX_ITEMS:
            raise ValueError(f"at most {MAX_ITEMS} input items; got {len(given)}")
        return [canonical(index, item) for index, item in enumerate(given)]

    @field_validator("tools")
    @classmethod
    def _function_tools(cls, tools: list[dict[str, Any]] | None) -> object:
        for index, tool in enumerate(tools or ()):
            if tool.get("type") != "function":
                raise ValueError(
                    f"tools[{index}].type must be 'function': the router passes on function tools"
                )
            if not isinstance(tool.get("name"), str) or not tool["name"]:
                raise ValueError(f"tools[{index}].name must be a non-empty string")
            extra = sorted(set(tool) - TOOL_FIELDS)
            if extra:
                raise ValueError(f"tools[{index}] takes no field '{extra[0]}'")
        return tools

    @field_validator("tool_choice")
    @classmethod
    def _function_choice(cls, choice: str | dict[str, Any] | None) -> object:
        if isinstance(choice, dict) and (choice.get("type") != "function" or set(choice) != {"type", "name"}):
            raise ValueError("tool_choice must be auto, none, required or {type: function, name}")
        return choice

    @property
    def items(self) -> list[Item]:
        """The input as items in their canonical form."""
        if isinstance(self.input, str):
            return [{"type": "message", "role": "user", "content": self.input}]
        return self.input


def canonical(index: int, item: Item) -> Item:
    """One input item in its canonical form; a ValueError naming it for what the router cannot take."""
    where = f"input[{index}]"
    kind = item.get("type", "message")  # a message may leave its type out
    if kind not in ITEM_FIELDS:
        raise ValueError(f"{where}.type '{kind}' is not one the router takes ({', '.join(ITEM_FIELDS)})")
    extra = sorted(set(item) - ITEM_FIELDS[kind])
    if extra:
        raise ValueError(f"{where}: a {kind} item takes no field '{extra[0]}'")
    if kind == "message":
        if item.get("role") not in ROLES:
            raise ValueError(f"{where}.role must be one of {', '.join(ROLES)}")
        return {"type": "message", "role": item["role"], "content": _content(where, item.get("content"))}
    fields = ("call_id", "name", "arguments") if kind == "function_call" else ("call_id", "output")
    for field in fields:
        if not isinstance(item.get(field), str):
            raise ValueError(f"{where}.{field} must be a string")
    return {"type": kind, **{field: item[field] for field in fields}}


def _content(where: str, content: object) -> str | list[Item]:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise ValueError(f"{where}.content must be a string or a list of content parts")
    parts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        key = PARTS.get(str(kind))
        if key is None or not isinstance(part.get(key), str):
            raise ValueError(
                f"{where}.content[{j}] must be an input_text, output_text or refusal part with its text"
            )
        parts.append({"type": kind, key: part[key]})
    return parts


def part_text(content: str | list[Item]) -> str:
    """A message's content as plain text: its parts' texts, joined."""
    if isinstance(content, str):
        return content
    return "".join(str(part.get(PARTS[part["type"]], "")) for part in content)
