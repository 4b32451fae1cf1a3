"""The rig lives in certok.demo (`certok demo` runs it too); the tests import it from here."""

from certok.demo.customer_zone import CUSTOMER_ZONE, ExpectedRecord, render_zone

__all__ = ["CUSTOMER_ZONE", "ExpectedRecord", "render_zone"]
