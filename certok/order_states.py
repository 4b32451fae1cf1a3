"""certok's order states: the one vocabulary of `orders.state` and of the API's order status.

These are certok's words for an order as a whole, which the httpsok API shows; the CA's own
status words (RFC 8555 §7.1.6: pending, ready, processing, valid, invalid) are
`certok.issuance.STATUS_*`. A leaf module: the DNS server, the HTTP-01 responder and the
tenants' service read `orders.state` too, below the orders package.
"""

from __future__ import annotations

from typing import Final

# Recorded, not finished yet: a worker drives it (its challenge material is served).
PENDING: Final = "pending"
# Finished with a certificate.
ISSUED: Final = "issued"
# Finished without one; `orders.reason` says why.
FAILURE: Final = "failure"

ORDER_STATES: Final = (PENDING, ISSUED, FAILURE)
FINISHED_STATES: Final = (ISSUED, FAILURE)
