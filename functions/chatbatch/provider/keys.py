"""API keys: checked when they are read, and scrubbed from any text that may echo them.

- ``checked_key`` takes a key as stored (a Secrets Manager secret, an environment
  variable) and returns it with its ends stripped, or raises ``MalformedKeyError`` when
  it cannot be an HTTP bearer token: anything but printable ASCII inside it (a line
  break of a pretty-printed JSON secret, two keys pasted during a rotation, a space, a
  control or non-ASCII character). The error names where the key came from and what is
  wrong with it, never the key; the client turns it into an account-level error, so the
  model pauses as on a 401 and no job fails for it.
- ``MissingKeyError``: a provider whose key is nowhere to be found (locally: its own
  ``api_key_env`` is unset; no other provider's key is ever used instead). The text
  names the provider and the variable; the client pauses the model for it, as above.
- ``Redactor`` scrubs a key from text a provider or a library produced: the key itself,
  its escaped forms (``repr``, JSON, a bytes ``repr``) and any piece of
  ``MIN_PIECE`` or more characters of any of them.
"""

from __future__ import annotations

import json
from typing import ClassVar

REDACTED = "[redacted]"
MIN_PIECE = 6  # shorter pieces of a key are not treated as a leak


class MalformedKeyError(ValueError):
    """A stored API key that is not a printable-ASCII token; the text names its source."""

    code: ClassVar[str] = "malformed_api_key"  # the code of the account error it becomes

    def __init__(self, source: str, problem: str) -> None:
        self.source = source
        super().__init__(
            f"the stored API key in {source} is malformed ({problem}): a key is printable "
            "ASCII with no whitespace inside; store the bare key, once"
        )


class MissingKeyError(ValueError):
    """A provider with no key: its environment variable is unset or empty."""

    code: ClassVar[str] = "missing_api_key"

    def __init__(self, provider: str, env: str) -> None:
        self.provider = provider
        self.env = env
        super().__init__(
            f"provider {provider} has no API key: set the environment variable {env} "
            f"(its api_key_env in the config; unset: <NAME>_API_KEY) to {provider}'s key; no "
            "other provider's key is used for it"
        )


def checked_key(raw: str, source: str) -> str | None:
    """``raw`` with its ends stripped (None when empty), or ``MalformedKeyError``."""
    key = raw.strip()
    for char in key:
        if not "!" <= char <= "~":
            raise MalformedKeyError(source, _problem(char))
    return key or None


def _problem(char: str) -> str:
    if char in "\r\n":
        return "it has a line break inside"
    if char.isspace():
        return "it has whitespace inside"
    if not char.isascii():
        return "it has a non-ASCII character"
    return "it has a control character"


class Redactor:
    """Replaces every piece of a secret (``MIN_PIECE``+ characters, in any of its escaped
    forms) in a text with ``REDACTED``; a secret shorter than that only as a whole."""

    def __init__(self, secret: str | None) -> None:
        self._pieces: set[str] = set()
        self._whole: list[str] = []
        for form in _forms(secret) if secret else ():
            if len(form) < MIN_PIECE:
                self._whole.append(form)
            else:
                self._pieces.update(
                    form[i : i + MIN_PIECE] for i in range(len(form) - MIN_PIECE + 1)
                )

    def __call__(self, text: str) -> str:
        for whole in self._whole:
            text = text.replace(whole, REDACTED)
        if not self._pieces:
            return text
        hidden = [False] * len(text)
        for i in range(len(text) - MIN_PIECE + 1):
            if text[i : i + MIN_PIECE] in self._pieces:
                hidden[i : i + MIN_PIECE] = [True] * MIN_PIECE
        out: list[str] = []
        for i, char in enumerate(text):
            if not hidden[i]:
                out.append(char)
            elif i == 0 or not hidden[i - 1]:
                out.append(REDACTED)
        return "".join(out)


def _forms(secret: str) -> set[str]:
    """The secret as written, and as ``repr``, JSON and a bytes ``repr`` escape it."""
    return {
        secret,
        repr(secret)[1:-1],
        ascii(secret)[1:-1],
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        repr(secret.encode("utf-8", "backslashreplace"))[2:-1],
    }
