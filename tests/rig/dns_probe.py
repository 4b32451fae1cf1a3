"""The rig lives in certok.demo (`certok demo` runs it too); the tests import it from here."""

from certok.demo.dns_probe import answer_texts, ask, shows, soa_serial

__all__ = ["answer_texts", "ask", "shows", "soa_serial"]
