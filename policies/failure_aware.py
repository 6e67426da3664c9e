"""The failure-aware JSON contract: {decision, answer, justification, evidence_quality}.

The router writes it for a policy's decision (router/completions.py) and reads an answerer's own; training
teaches an answerer to write it and judges what it wrote (train/answerer.py, train/answerer_eval.py). Both
sides read and write it through this module, so they agree on it. Pure text in, text out.
"""

from __future__ import annotations

import json
import re
from typing import Any

from policies.engine import Decision

DECISIONS = ("answer", "uncertain", "refuse")
"""The failure-aware decisions, the least cautious first."""
EVIDENCE = ("high", "medium", "low", "unknown")
UNREADABLE = "the answerer's reply was not the failure-aware JSON"
UNJUSTIFIED = "the answerer gave no justification"
_FIELD = r'"{}"\s*:\s*("(?:[^"\\]|\\.)*")'


def evidence_quality(confidence: float | None) -> str:
    if confidence is None:
        return "unknown"
    return "high" if confidence >= 0.7 else "medium" if confidence >= 0.4 else "low"


def verdict(action: str) -> str:
    """The failure-aware decision a router action stands for."""
    return {"refuse": "refuse", "hedge": "uncertain"}.get(action, "answer")


def failure_aware_text(content: str, decision: Decision, stated: bool = False) -> str:
    """The answer `content` as the failure-aware JSON for `decision`.

    `stated`: the content is an answerer's own failure-aware JSON (read with `read_stated`); the router's
    decision then only ever makes it more cautious, and its reason is added to the answerer's."""
    ruled = verdict(decision.action)
    confidence = "not scored" if decision.confidence is None else f"confidence {decision.confidence:.2f}"
    justification = f"{confidence}; rule '{decision.rule}' chose {decision.action}" + (
        f" {decision.target}" if decision.target and decision.action != "refuse" else ""
    )
    payload: dict[str, Any] = {
        "decision": ruled,
        "answer": None if ruled == "refuse" else content,
        "justification": justification,
        "evidence_quality": evidence_quality(decision.confidence),
    }
    if stated and ruled != "refuse":
        own = read_stated(content)
        final = max(ruled, own["decision"], key=DECISIONS.index)
        payload = {
            "decision": final,
            "answer": None if final == "refuse" else own["answer"],
            "justification": f"{own['justification']} ({justification})",
            "evidence_quality": own["evidence_quality"],
        }
    return json.dumps(payload, ensure_ascii=False)


def read_stated(text: str) -> dict[str, Any]:
    """An answerer's failure-aware reply, read so that it always yields the four fields.

    The first JSON object in the text is taken (a model may write words around it); without one, the
    `decision` and `answer` strings of a reply cut short are salvaged. Missing or malformed fields are
    filled in: an unreadable decision, or `answer` without an answer, is `uncertain`; a refusal carries no
    answer; evidence quality outside high/medium/low is `unknown`.
    """
    found = _first_object(text)
    readable = found is not None
    fields = found if found is not None else _salvaged(text)
    decision = str(fields.get("decision") or "").strip().lower()
    answer = _text(fields.get("answer"))
    if decision not in DECISIONS:
        readable, decision = False, "uncertain"
        if answer is None and found is None:
            answer = text.strip() or None  # plain words are still the model's answer
    if decision == "answer" and not answer:
        decision = "uncertain"
    justification = _text(fields.get("justification")) or (UNREADABLE if not readable else UNJUSTIFIED)
    quality = str(fields.get("evidence_quality") or "").strip().lower()
    return {
        "decision": decision,
        "answer": None if decision == "refuse" else answer,
        "justification": justification,
        "evidence_quality": quality if quality in EVIDENCE else "unknown",
    }


def _first_object(text: str) -> dict[str, Any] | None:
    decoder = json.JSONDecoder()
    for match in re.finditer(r"\{", text):
        try:
            value, _ = decoder.raw_decode(text, match.start())
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return value
    return None


def _salvaged(text: str) -> dict[str, Any]:
    """The complete string fields of a JSON object cut short (an answer that reached its token cap)."""
    found: dict[str, Any] = {}
    for name in ("decision", "answer", "justification", "evidence_quality"):
        match = re.search(_FIELD.format(name), text)
        if match is not None:
            found[name] = json.loads(match.group(1))
    return found


def _text(value: object) -> str | None:
    if value is None or isinstance(value, str):
        return value.strip() if isinstance(value, str) else None
    return json.dumps(value, ensure_ascii=False)
