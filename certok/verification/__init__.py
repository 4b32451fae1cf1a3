"""Verification: is a name this tenant's (dns: its CNAME; http: its redirect)? The use cases
behind /v1/cert/dv and the order-time ownership gate; they drive the pre-checks and issue codes."""
