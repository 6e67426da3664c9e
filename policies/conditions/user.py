"""`user`: the request's `user` field is one of these."""

from policies.conditions.base import RequestField


class User(RequestField, name="user"):
    """A request whose `user` is listed."""
