"""Console users: invites, Argon2id passwords, TOTP second factor and recovery codes.

A user belongs to one tenant, or is an operator (no tenant). A user is created with a
one-time invite secret (only its SHA-256 digest is stored) and chooses a password by opening
the invite link. Passwords are hashed with Argon2id (argon2-cffi's defaults, RFC 9106's
second recommended option); the TOTP secret is encrypted with the SecretBox.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

import pyotp
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from certok.clock import Clock, utcnow
from certok.crypto import SecretBox
from certok.db.models import ConsoleSession, ConsoleUser, RecoveryCode, Tenant
from certok.errors import Conflict, InvalidRequest, NotFound

EMAIL_PATTERN = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]+$")
MIN_PASSWORD = 12
MAX_PASSWORD = 1024
RECOVERY_CODES = 10
TOTP_STEP = 30

_hasher = PasswordHasher()
# Verified against when the account is unknown, so a wrong e-mail costs what a wrong password
# costs and the time taken does not tell which accounts exist.
_DUMMY_HASH = _hasher.hash(secrets.token_hex(16))


def use_hasher(hasher: PasswordHasher) -> None:
    """Replace the Argon2id parameters (tests: cheaper ones; the hash records its own, so
    existing hashes still verify and are rehashed at the next sign-in)."""
    global _hasher, _DUMMY_HASH
    _hasher = hasher
    _DUMMY_HASH = hasher.hash(secrets.token_hex(16))


@dataclass(frozen=True)
class UserRow:
    id: int
    email: str
    operator: bool
    tenant_id: int | None
    disabled: bool
    invited: bool  # no password chosen yet
    totp: bool


def secret_digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def normalize_email(email: str) -> str:
    value = email.strip().lower()
    if len(value) > 254 or not EMAIL_PATTERN.match(value):
        raise InvalidRequest(f"{email!r} is not an e-mail address: give one like ops@example.com")
    return value


def password_problem(password: str) -> str | None:
    """A message id (console catalogs) saying what is wrong with a new password, or None."""
    if len(password) < MIN_PASSWORD:
        return "error.password_short"
    if len(password) > MAX_PASSWORD:
        return "error.password_long"
    return None


def create_user(
    session: Session,
    email: str,
    *,
    tenant_id: int | None,
    invite_hours: float,
    clock: Clock = utcnow,
) -> tuple[int, str]:
    """A new user (an operator when tenant_id is None) and its invite secret, shown once."""
    address = normalize_email(email)
    if session.scalar(select(ConsoleUser.id).where(ConsoleUser.email == address)) is not None:
        raise Conflict(f"a console user {address} already exists: invite it again instead")
    secret = secrets.token_urlsafe(32)
    user = ConsoleUser(
        tenant_id=tenant_id,
        email=address,
        operator=tenant_id is None,
        disabled=False,
        invite_digest=secret_digest(secret),
        invite_expires_at=clock() + dt.timedelta(hours=invite_hours),
        created_at=clock(),
    )
    session.add(user)
    session.flush()
    return user.id, secret


def reinvite(session: Session, user_id: int, invite_hours: float, clock: Clock = utcnow) -> str:
    """A fresh invite secret for a user who has not chosen a password yet."""
    secret = secrets.token_urlsafe(32)
    session.execute(
        update(ConsoleUser)
        .where(ConsoleUser.id == user_id)
        .values(
            invite_digest=secret_digest(secret),
            invite_expires_at=clock() + dt.timedelta(hours=invite_hours),
        )
    )
    return secret


def invited_user(session: Session, secret: str, clock: Clock = utcnow) -> ConsoleUser | None:
    """The user a live invite secret belongs to, or None (unknown, used or expired)."""
    if not secret or len(secret) > 100:
        return None
    user = session.scalar(
        select(ConsoleUser).where(ConsoleUser.invite_digest == secret_digest(secret))
    )
    if user is None or user.disabled or user.invite_expires_at is None:
        return None
    return user if user.invite_expires_at > clock() else None


def accept_invite(session: Session, user: ConsoleUser, password: str) -> None:
    user.password_hash = _hasher.hash(password)
    user.invite_digest = None
    user.invite_expires_at = None


def check_password(session: Session, email: str, password: str) -> ConsoleUser | None:
    """The user whose password this is (enabled, invite accepted), or None; same cost for all."""
    try:
        address = normalize_email(email)
    except InvalidRequest:
        address = ""
    user = session.scalar(select(ConsoleUser).where(ConsoleUser.email == address))
    stored = user.password_hash if user is not None and user.password_hash else _DUMMY_HASH
    try:
        _hasher.verify(stored, password[:MAX_PASSWORD])
    except (VerificationError, InvalidHashError):
        return None
    if user is None or user.password_hash is None or user.disabled:
        return None
    if user.tenant_id is not None:
        tenant_disabled = session.scalar(select(Tenant.disabled).where(Tenant.id == user.tenant_id))
        if tenant_disabled:
            return None
    if _hasher.check_needs_rehash(stored):
        user.password_hash = _hasher.hash(password)
    return user


def set_password(session: Session, user_id: int, password: str) -> None:
    session.execute(
        update(ConsoleUser)
        .where(ConsoleUser.id == user_id)
        .values(password_hash=_hasher.hash(password))
    )


def set_user_disabled(session: Session, user_id: int, disabled: bool) -> None:
    session.execute(update(ConsoleUser).where(ConsoleUser.id == user_id).values(disabled=disabled))
    if disabled:
        session.execute(delete(ConsoleSession).where(ConsoleSession.user_id == user_id))


def list_users(session: Session, tenant_id: int | None) -> list[UserRow]:
    """A tenant's users, or (tenant_id None) the operators."""
    where = (
        ConsoleUser.operator.is_(True)
        if tenant_id is None
        else (ConsoleUser.tenant_id == tenant_id)
    )
    return [
        UserRow(
            u.id,
            u.email,
            u.operator,
            u.tenant_id,
            u.disabled,
            u.password_hash is None,
            u.totp_encrypted is not None,
        )
        for u in session.scalars(select(ConsoleUser).where(where).order_by(ConsoleUser.email))
    ]


def user_by_email(session: Session, email: str) -> ConsoleUser:
    user = session.scalar(select(ConsoleUser).where(ConsoleUser.email == normalize_email(email)))
    if user is None:
        raise NotFound(f"no console user {email.strip().lower()}: see `certok user create`")
    return user


def find_user(session: Session, user_id: int, tenant_id: int | None) -> ConsoleUser:
    """A user of this tenant (or an operator, tenant_id None); any other is unknown."""
    user = session.get(ConsoleUser, user_id)
    if user is None or user.tenant_id != tenant_id or (tenant_id is None and not user.operator):
        raise NotFound("no such user")
    return user


# --- second factor ---------------------------------------------------------------------------
def new_totp_secret() -> str:
    return pyotp.random_base32()


def totp_uri(secret: str, email: str) -> str:
    return pyotp.TOTP(secret).provisioning_uri(name=email, issuer_name="certok")


def matching_step(secret: str, code: str, now: dt.datetime) -> int | None:
    """The time step (this one or a neighbour, for clock drift) whose code this is, or None."""
    code = code.strip().replace(" ", "")
    if not re.fullmatch(r"\d{6}", code):
        return None
    totp = pyotp.TOTP(secret)
    step = int(now.timestamp()) // TOTP_STEP
    for candidate in (step, step - 1, step + 1):
        if hmac.compare_digest(totp.generate_otp(candidate), code):
            return candidate
    return None


def enable_totp(
    session: Session, user_id: int, secret: str, box: SecretBox, step: int
) -> list[str]:
    """Store the secret (encrypted) and return new recovery codes, shown this once."""
    user = session.get(ConsoleUser, user_id)
    if user is None:
        raise NotFound("no such user")
    user.totp_encrypted = box.encrypt(secret.encode("ascii"), f"console-user:{user_id}")
    user.totp_last_step = step
    session.execute(delete(RecoveryCode).where(RecoveryCode.user_id == user_id))
    codes = ["-".join(secrets.token_hex(2) for _ in range(3)) for _ in range(RECOVERY_CODES)]
    for code in codes:
        session.add(RecoveryCode(user_id=user_id, digest=secret_digest(code)))
    return codes


def disable_totp(session: Session, user_id: int) -> None:
    session.execute(
        update(ConsoleUser)
        .where(ConsoleUser.id == user_id)
        .values(totp_encrypted=None, totp_last_step=None)
    )
    session.execute(delete(RecoveryCode).where(RecoveryCode.user_id == user_id))


def check_second_factor(
    session: Session, user_id: int, code: str, box: SecretBox, clock: Clock = utcnow
) -> bool:
    """A TOTP code not used before, or an unused recovery code (then spent)."""
    user = session.get(ConsoleUser, user_id)
    if user is None or user.totp_encrypted is None:
        return False
    secret = box.decrypt(user.totp_encrypted, f"console-user:{user_id}").decode("ascii")
    now = clock()
    step = matching_step(secret, code, now)
    if step is not None:
        if user.totp_last_step is not None and step <= user.totp_last_step:
            return False  # replayed
        user.totp_last_step = step
        return True
    recovery = session.scalar(
        select(RecoveryCode).where(
            RecoveryCode.user_id == user_id,
            RecoveryCode.digest == secret_digest(code.strip().lower()),
            RecoveryCode.used_at.is_(None),
        )
    )
    if recovery is None:
        return False
    recovery.used_at = now
    return True
