"""The rig lives in certok.demo (`certok demo` runs it too); the tests import it from here."""

from certok.demo.binaries import find_binary, missing_binaries
from certok.demo.config_files import TEMPLATES
from certok.demo.rig import DEFAULT_CERTOK_ZONE, Rig

__all__ = ["DEFAULT_CERTOK_ZONE", "TEMPLATES", "Rig", "find_binary", "missing_binaries"]
