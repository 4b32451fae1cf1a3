"""The settings of one ACME certificate authority, and the authorities certok knows by default."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

LETSENCRYPT_DIRECTORY = "https://acme-v02.api.letsencrypt.org/directory"
GOOGLE_DIRECTORY = "https://dv.acme-v02.api.pki.goog/directory"
ZEROSSL_DIRECTORY = "https://acme.zerossl.com/v2/DV90"


class IssuerSettings(BaseModel):
    """One named ACME certificate authority (the `issuer` parameter of /v1/cert/apply)."""

    # A misspelt field (eab_kd) must not be ignored: the issuer would silently lack it.
    model_config = ConfigDict(extra="forbid")

    directory: str
    # PEM bundle to trust for the directory's TLS (tests: the rig's own CA); None = system CAs.
    ca_bundle: Path | None = None
    # External account binding, where the CA requires it (Google Trust Services, ZeroSSL).
    eab_kid: str | None = None
    eab_hmac_key: str | None = None
    # ZeroSSL only: fetch EAB credentials for this email from ZeroSSL's API on first use.
    zerossl_email: str | None = None
    # Contact address registered with the ACME account (optional).
    contact_email: str | None = None
    # The ACME account's budget of new orders in a sliding window, mirroring the CA's own
    # limit (Let's Encrypt: 300 per account per 3 hours); orders beyond it wait. 0: no budget.
    new_orders_per_window: int = Field(default=300, ge=0)
    new_order_window_seconds: float = Field(default=10800.0, gt=0)


def default_issuers() -> dict[str, IssuerSettings]:
    return {
        "google": IssuerSettings(directory=GOOGLE_DIRECTORY),
        "letsencrypt": IssuerSettings(directory=LETSENCRYPT_DIRECTORY),
        "zerossl": IssuerSettings(directory=ZEROSSL_DIRECTORY),
    }
