"""Exit codes, and the one line that explains an error that ends a command.

``ChatbatchGroup`` (``cli/app.py``) catches what a command raises and prints ``explain``'s
line instead of a traceback: a ``CliError`` says what to do in its own words; config,
stack, AWS credential and endpoint errors are translated here, and so are a missing module
(the ``local`` commands without ``chatbatch[local]``) and an unsupported moto.
"""

from __future__ import annotations

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
    ProfileNotFound,
    SSOTokenLoadError,
    TokenRetrievalError,
    UnauthorizedSSOTokenError,
)

from chatbatch.client.deployment import StackNotFound
from chatbatch.core.config import ConfigError
from chatbatch.local.extra import LOCAL_INSTALL, LOCAL_MODULES, UnsupportedMoto

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INCOMPLETE = 3
EXPIRED_CODES = {"ExpiredToken", "ExpiredTokenException", "RequestExpired", "TokenRefreshRequired"}
REJECTED_CODES = {
    "InvalidClientTokenId",
    "UnrecognizedClientException",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "AuthFailure",
}


class CliError(Exception):
    """A failure the user can act on: printed as one line, exit ``code``."""

    def __init__(self, message: str, code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.code = code


def explain(err: Exception) -> tuple[str, int]:
    """One line and an exit code for an exception that ends a command."""
    if isinstance(err, CliError):
        return str(err), err.code
    if isinstance(err, ConfigError):
        return str(err), EXIT_USAGE
    if isinstance(err, StackNotFound):
        return str(err), EXIT_FAILURE
    if isinstance(err, ClientError):
        return _client_error(err), EXIT_FAILURE
    if isinstance(err, BotoCoreError):
        return _botocore_error(err), EXIT_FAILURE
    if isinstance(err, UnsupportedMoto):
        return str(err), EXIT_USAGE
    if isinstance(err, ModuleNotFoundError):
        return _missing_module(err), EXIT_USAGE
    if isinstance(err, OSError):
        return str(err), EXIT_FAILURE
    return f"unexpected {type(err).__name__}: {err} (run `chatbatch --debug ...` for details)", 1


def _missing_module(err: ModuleNotFoundError) -> str:
    name = (err.name or "").split(".")[0]
    if name in LOCAL_MODULES:
        return (
            f"the local runtime needs {name}, which is not installed: {LOCAL_INSTALL} "
            "(moto's server and the version its fixes were written for)"
        )
    return f"{err}: chatbatch's install is incomplete; reinstall it: pip install chatbatch"


def _client_error(err: ClientError) -> str:
    error = err.response.get("Error", {})
    code, message = error.get("Code", "?"), error.get("Message", "")
    if code in EXPIRED_CODES:
        return (
            f"your AWS credentials have expired ({code}): refresh them (`aws sso login`, "
            "or new session credentials) and run the command again"
        )
    if code in REJECTED_CODES:
        return (
            f"AWS rejected the credentials ({code}): check AWS_PROFILE or the access keys "
            "(for `chatbatch local up`, export the credentials it printed)"
        )
    return f"AWS {err.operation_name} failed: {code}: {message}"


def _botocore_error(err: BotoCoreError) -> str:
    if isinstance(err, NoCredentialsError | PartialCredentialsError):
        return (
            "no AWS credentials found: run `aws configure` or `aws sso login`, or set "
            "AWS_PROFILE (for `chatbatch local up`, export the credentials it printed)"
        )
    if isinstance(err, TokenRetrievalError | SSOTokenLoadError | UnauthorizedSSOTokenError):
        return f"your AWS login has expired ({err}): run `aws sso login` and try again"
    if isinstance(err, NoRegionError):
        return "no AWS region: set AWS_REGION (or a region in your AWS profile)"
    if isinstance(err, ProfileNotFound):
        return f"{err}: check AWS_PROFILE against ~/.aws/config"
    if isinstance(err, EndpointConnectionError):
        return (
            f"cannot reach {err.kwargs.get('endpoint_url')}: if AWS_ENDPOINT_URL points at "
            "`chatbatch local up`, start it (or unset AWS_ENDPOINT_URL to use AWS)"
        )
    return f"AWS: {err}"
