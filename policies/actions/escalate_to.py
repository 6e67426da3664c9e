"""`escalate_to: TARGET`: a larger model answers; what answer_with does, told to clients as an escalation."""

from policies.actions.answer_with import AnswerWith


class EscalateTo(AnswerWith, name="escalate_to"):
    outcome = "escalate"
