"""The certificate record a managed certificate deploys, its chain and key, and how the agent's
file on disk is compared with it."""

from __future__ import annotations

import hashlib

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from sqlalchemy.orm import Session

from certok.db.models import Certificate, CertificateSecret, ManagedCertificate

# Successors followed from a deployed record to the newest one.
MAX_SUCCESSORS = 10


def current_record(session: Session, mc: ManagedCertificate) -> Certificate | None:
    """The record `mc` deploys: the newest of its successors when another order (an `apply`
    for the same names, say) renewed it meanwhile; never another tenant's."""
    record = None
    next_id = mc.certificate_id
    for _ in range(MAX_SUCCESSORS):
        if next_id is None:
            break
        found = session.get(Certificate, next_id)
        if found is None or found.tenant_id != mc.tenant_id:
            break
        record, next_id = found, found.replaced_by_id
    return record


def record_secret(session: Session, record: Certificate) -> CertificateSecret:
    """A record's full chain and key ciphertext (kept apart so the records' rows stay small)."""
    secret = session.get(CertificateSecret, record.id)
    if secret is None:  # written in the same transaction as the record: never missing
        raise LookupError(f"certificate {record.id} has no chain and key")
    return secret


def leaf_sha256(pem: bytes) -> str | None:
    """SHA-256 of the first certificate in `pem` (DER), or None if there is none."""
    try:
        leaf = x509.load_pem_x509_certificates(pem)[0]
    except (ValueError, IndexError):
        return None
    return hashlib.sha256(leaf.public_bytes(Encoding.DER)).hexdigest()
