"""Who may write a batch: producer ARNs for the queue policies, principal ids for the
worker's check of each message.

Two names for one identity:

- **ARN** (``aws:PrincipalArn`` in a queue policy): ``arn:aws:iam::ACCOUNT:role/NAME`` or
  ``arn:aws:iam::ACCOUNT:user/NAME``. ``[security] producers`` lists them; the value
  ``"deployer"`` stands for the identity that synthesizes the stack (STS
  GetCallerIdentity: an assumed-role ARN becomes its role's ARN, at any path).
- **Principal id** (SQS ``SenderId``, STS ``UserId``): ``AIDA…`` for a user, ``AROA…:SESSION``
  for an assumed role. A batch records its registrant's id without the session
  (``principal_id``), so any session of the registering role may write it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

DEPLOYER = "deployer"
# an IAM role or user ARN (a path allowed; ``*`` and ``?`` as ArnLike wildcards)
PRODUCER_ARN_PATTERN = r"^arn:aws[a-z-]*:iam::\d{12}:(role|user)/[A-Za-z0-9+=,.@_/*?-]{1,512}$"
_ASSUMED_ROLE = re.compile(r"^arn:(aws[a-z-]*):sts::(\d{12}):assumed-role/([^/]+)/[^/]+$")
_IAM = re.compile(PRODUCER_ARN_PATTERN)


class ProducerError(ValueError):
    """A producer that cannot be resolved to an ARN (the message says what to do)."""


def principal_id(sender_id: str) -> str:
    """The principal part of a ``SenderId`` or STS ``UserId``: an assumed role's role id
    without its session name (``AROAX:worker-fn`` -> ``AROAX``); a user's id as it is."""
    return sender_id.split(":", 1)[0]


def caller_principal(sts: Any) -> str:
    """This process's principal id, from STS GetCallerIdentity (no permission needed)."""
    return principal_id(str(sts.get_caller_identity()["UserId"]))


def deployer_arns(caller_arn: str) -> list[str]:
    """The producer ARNs of the identity ``caller_arn`` (STS GetCallerIdentity's ``Arn``):
    an assumed role's role, at the root path or any other; a user as it is."""
    if match := _ASSUMED_ROLE.fullmatch(caller_arn):
        partition, account, role = match.groups()
        base = f"arn:{partition}:iam::{account}:role"
        return [f"{base}/{role}", f"{base}/*/{role}"]
    if _IAM.fullmatch(caller_arn) and "*" not in caller_arn and "?" not in caller_arn:
        return [caller_arn]
    raise ProducerError(
        f"security.producers: {DEPLOYER!r} resolves to the identity that deploys, but "
        f"{caller_arn!r} is neither an IAM user nor an assumed role; list the producer "
        "ARNs (arn:aws:iam::ACCOUNT:role/NAME) instead"
    )


def producer_arns(producers: Iterable[str], caller_arn: Callable[[], str]) -> list[str]:
    """The configured producers as ARNs, ``"deployer"`` resolved through ``caller_arn``
    (called only if needed; its errors become a ``ProducerError`` saying what to do)."""
    arns: list[str] = []
    for producer in producers:
        if producer != DEPLOYER:
            arns.append(producer)
            continue
        try:
            arn = caller_arn()
        except Exception as err:
            raise ProducerError(
                f"security.producers: {DEPLOYER!r} needs the deploying identity, and STS "
                f"GetCallerIdentity failed ({type(err).__name__}); run with AWS credentials, "
                "or list the producer ARNs (arn:aws:iam::ACCOUNT:role/NAME) instead"
            ) from None
        arns.extend(deployer_arns(arn))
    return list(dict.fromkeys(arns))
