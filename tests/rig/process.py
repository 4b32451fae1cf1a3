"""The rig lives in certok.demo (`certok demo` runs it too); the tests import it from here."""

from certok.demo.process import ManagedProcess, tail, tcp_is_listening

__all__ = ["ManagedProcess", "tail", "tcp_is_listening"]
