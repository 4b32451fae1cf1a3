"""The rig lives in certok.demo (`certok demo` runs it too); the tests import it from here."""

from certok.demo.errors import RigError

__all__ = ["RigError"]
