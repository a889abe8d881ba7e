"""One Secrets Manager secret per provider for its API key (or an existing one by ARN).

The stack never holds a key: a created secret starts with a random placeholder generated
by Secrets Manager at deploy time, and the real key is set afterwards with
``aws secretsmanager put-secret-value``. The worker gets only the secret's ARN, in
``CHATBATCH_SECRET_<PROVIDER>``.
"""

from __future__ import annotations

import re

from aws_cdk import Acknowledgment, Validations
from aws_cdk import aws_secretsmanager as secretsmanager
from constructs import Construct

from chatbatch.core.config import Config

ENV_SECRET_PREFIX = "CHATBATCH_SECRET_"
# A complete secret ARN ends in "-" and the 6 random characters Secrets Manager appends.
_COMPLETE_ARN = re.compile(r"-[A-Za-z0-9]{6}$")


def secret_env_name(provider: str) -> str:
    """``deepseek`` -> ``CHATBATCH_SECRET_DEEPSEEK``; ``my-gw`` -> ``CHATBATCH_SECRET_MY_GW``.

    Must match ``chatbatch.worker.services.secret_env``, which reads the variable.
    """
    return ENV_SECRET_PREFIX + "".join(c if c.isalnum() else "_" for c in provider.upper())


def _construct_id(provider: str) -> str:
    return "".join(p.capitalize() for p in re.split(r"[^A-Za-z0-9]+", provider)) or "Provider"


class ProviderSecrets(Construct):
    """``secrets[provider]``: the API-key secret of every configured provider."""

    def __init__(self, scope: Construct, construct_id: str, *, config: Config) -> None:
        super().__init__(scope, construct_id)
        self.secrets: dict[str, secretsmanager.ISecret] = {}
        for provider, settings in config.providers.items():
            cid = _construct_id(provider)
            if settings.secret_arn:
                arn = settings.secret_arn
                if _COMPLETE_ARN.search(arn):
                    secret = secretsmanager.Secret.from_secret_complete_arn(self, cid, arn)
                else:
                    secret = secretsmanager.Secret.from_secret_partial_arn(self, cid, arn)
            else:
                created = secretsmanager.Secret(
                    self,
                    cid,
                    description=f"chatbatch: API key of provider '{provider}' "
                    f"({settings.base_url}); set it with put-secret-value",
                )
                Validations.of(created).acknowledge(
                    Acknowledgment(
                        id="AwsSolutions-SMG4",
                        reason="A third-party API key is issued in the provider's console "
                        "and has no API Secrets Manager could rotate it with; rotate it at "
                        "the provider and store it with put-secret-value.",
                    )
                )
                secret = created
            self.secrets[provider] = secret
