"""`tenant`: the caller's API key is one of these, by name (with `auth: required`); `admin` for the admin
key."""

from policies.conditions.base import RequestField


class Tenant(RequestField, name="tenant"):
    """A request whose caller's key is listed, by name."""
