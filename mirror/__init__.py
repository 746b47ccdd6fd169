"""mirror: a local, queryable copy of your fal.ai request history."""

__version__ = "0.1.0"
