"""The database schema (SQLAlchemy 2 declarative), one module per concept; Alembic migrations
mirror it exactly. Importing any of them imports them all (this package), so the metadata is
whole: some add indexes to the tables of others (the console's to the orders')."""

from certok.db.models.agents import AgentHost, AgentLogEntry, ManagedCertificate
from certok.db.models.audit import AuditEvent
from certok.db.models.base import Base, UTCDateTime
from certok.db.models.certificates import Certificate, CertificateName, CertificateSecret
from certok.db.models.console import ConsoleSession, ConsoleUser, DelegationCheck, RecoveryCode
from certok.db.models.events import EventMark, OrderNotifyUrl, WebhookDelivery, WebhookEndpoint
from certok.db.models.orders import AcmeAccount, ChallengeRecord, Order
from certok.db.models.quotas import AcmeNewOrder
from certok.db.models.tenants import ApiToken, Delegation, HttpHostBinding, Tenant, VerificationCode

__all__ = [
    "AcmeAccount",
    "AcmeNewOrder",
    "AgentHost",
    "AgentLogEntry",
    "ApiToken",
    "AuditEvent",
    "Base",
    "Certificate",
    "CertificateName",
    "CertificateSecret",
    "ChallengeRecord",
    "ConsoleSession",
    "ConsoleUser",
    "Delegation",
    "DelegationCheck",
    "EventMark",
    "HttpHostBinding",
    "ManagedCertificate",
    "Order",
    "OrderNotifyUrl",
    "RecoveryCode",
    "Tenant",
    "UTCDateTime",
    "VerificationCode",
    "WebhookDelivery",
    "WebhookEndpoint",
]
