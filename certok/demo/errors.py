"""The one exception the rig raises: what failed, and the log tail that says why."""

from __future__ import annotations


class RigError(RuntimeError):
    """A rig service could not be prepared, started, reached or changed."""
