"""The DNS zone certok serves in the tests (its `CERTOK_DNS_ZONE`)."""

from __future__ import annotations

CERTOK_ZONE = "acme.svc.test"
