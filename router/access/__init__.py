"""Who may call and how much: API keys, per-key limits and budgets (docs/operations.md)."""
