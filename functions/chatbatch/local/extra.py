"""What the local runtime needs beyond a plain install, and the checks that say so.

``chatbatch local run`` and ``local up`` serve AWS with moto's server, which a plain
``pip install chatbatch`` does not bring: ``pip install 'chatbatch[local]'`` does, at the one
moto version the fixes in ``moto_fixes`` were written for (they patch moto's internals, so
another version could break them silently). Nothing here imports moto: the CLI reads these
names to explain a missing or unsupported moto in one line.
"""

from __future__ import annotations

from importlib import metadata

# The moto version the fixes in ``moto_fixes`` were written for; pyproject.toml's ``local``
# extra pins the same one (``tests/unit/test_packaging.py``).
SUPPORTED_MOTO = "5.2.5"
LOCAL_INSTALL = "pip install 'chatbatch[local]'"
# Top-level modules the ``local`` extra brings: moto and what its server runs on.
LOCAL_MODULES = frozenset({"moto", "flask", "flask_cors", "werkzeug"})


class UnsupportedMoto(RuntimeError):
    """The installed moto is not the version the fixes were written for."""

    def __init__(self, installed: str) -> None:
        self.installed = installed
        super().__init__(
            f"the local runtime's moto fixes were written for moto {SUPPORTED_MOTO}, but moto "
            f"{installed} is installed (they patch moto's internals and could break silently "
            f"on another version): pip install 'moto[server]=={SUPPORTED_MOTO}' "
            f"(or {LOCAL_INSTALL})"
        )


def installed_moto() -> str | None:
    """The installed moto's version (None: not installed)."""
    try:
        return metadata.version("moto")
    except metadata.PackageNotFoundError:
        return None


def check_moto() -> None:
    """Raise ``UnsupportedMoto`` unless the installed moto is ``SUPPORTED_MOTO``."""
    installed = installed_moto()
    if installed is None:
        raise ModuleNotFoundError(f"moto is not installed: {LOCAL_INSTALL}", name="moto")
    if installed != SUPPORTED_MOTO:
        raise UnsupportedMoto(installed)
