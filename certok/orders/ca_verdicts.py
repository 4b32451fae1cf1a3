"""Reading the CA's verdict on an order's authorizations, for the order driver."""

from __future__ import annotations

from certok.issuance import STATUS_PENDING, AcmeProblem, OrderInfo, ProblemKind
from certok.orders.accounts import IssuerAccount


def first_authz_error(info: OrderInfo) -> str | None:
    """The first error the CA gave for one of the order's authorizations, if any."""
    return next((a.error for a in info.authorizations if a.error), None)


def answered_before(
    account: IssuerAccount, authz_url: str, challenge_url: str, problem: AcmeProblem
) -> bool:
    """Whether a refused answer only means the CA already has an earlier one.

    After a crash between answering and saving that fact, the restarted driver answers
    again; if the first answer arrived meanwhile, the challenge is no longer pending and
    the CA refuses the second (Pebble: `malformed`). The next fetch shows the outcome.
    """
    if problem.kind is not ProblemKind.REJECTED:
        return False
    authz = account.session.fetch_authorization(authz_url)
    current = next((c for c in authz.challenges if c.url == challenge_url), None)
    return current is not None and current.status != STATUS_PENDING
