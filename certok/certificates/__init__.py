"""Certificates after `issued`: records, renewal timing (ARI, RFC 9773), revocation."""
