"""One exception hierarchy for the library.

    MirrorError                  anything mirror knows how to explain in one line
    ├── ConfigError              bad or unsafe configuration: no key, bad flag value (exit 2)
    │   └── UsageError           flags that do not fit the database (no target to sync)
    ├── LockedError              another sync holds this database (exit 75)
    ├── ApiError                 the API answered with an error we do not retry
    │   ├── AuthError            401/403: the key is missing, wrong or lacks access
    │   │   └── AdminRequired    403 from an operation that needs an ADMIN key (cost)
    │   └── NotAModel            the model API refused an id given with --model
    ├── ApiUnavailable           retries exhausted: 429s, 5xx, resets, timeouts
    ├── ProxyRefused             the proxy (HTTPS_PROXY...) would not connect to the API
    ├── UntrustedCertificate     the API's TLS certificate does not verify
    ├── BadDataError             the API's answer is malformed; nothing of it was committed
    │   └── PageTooLarge         a page over the body cap (a walk asks again in smaller pages)
    ├── StoreError               local storage: disk full, read-only, corrupt, foreign file
    │   └── SchemaTooNewError    the database was written by a newer mirror
    └── OutputError              a file a command writes (report, metrics) could not be written

Messages never contain the API key: it is not stored on any of these objects, and the text
of each (``str(err)``, which a traceback shows too) has every registered secret redacted
(``mirror.redact``), so a server echoing the key back cannot put it in one. The CLI turns
each into one line and an exit code (see ``mirror.cliutil``); tests see the full traceback.
"""

from __future__ import annotations

from mirror.redact import redact


class MirrorError(Exception):
    """Base class: ``str(err)`` is the one line a user sees."""

    #: the short class name shown to users, e.g. "api unavailable"
    kind = "error"
    exit_code = 1

    def __str__(self) -> str:
        return redact(super().__str__())

    @property
    def hint(self) -> str:
        """What to do about it, appended to the user's line when the message does not say."""
        return ""


class ConfigError(MirrorError):
    kind = "usage"
    exit_code = 2


class UsageError(ConfigError):
    """The command's flags do not fit what the database holds: the CLI prints it as it
    prints its own usage errors, pointing to the command's --help."""


class LockedError(MirrorError):
    kind = "busy"
    exit_code = 75


class ApiError(MirrorError):
    """An error answer from the API: status, fal's error type and message, and the URL path."""

    kind = "api error"

    @property
    def hint(self) -> str:
        return "check the endpoint id and the flags" if 400 <= self.status < 500 else ""

    def __init__(self, status: int, error_type: str | None, message: str, url: str) -> None:
        error_type = redact(error_type) if error_type else error_type
        message = redact(message)
        self.status = status
        self.error_type = error_type
        self.message = message
        self.url = url
        super().__init__(
            f"HTTP {status}{f' {error_type}' if error_type else ''}: {message} ({url})"
        )


class AuthError(ApiError):
    kind = "key rejected"

    @property
    def hint(self) -> str:
        if self.status == 401:
            return (
                "check FAL_KEY (or FAL_KEY_ID and FAL_KEY_SECRET); nothing was recorded as synced"
            )
        return "check that the key's account owns this endpoint and that the id is right"


class AdminRequired(AuthError):
    """The key was refused an ADMIN-scope operation (billing events, usage): it may well
    be fine for everything else."""

    kind = "key lacks ADMIN scope"

    @property
    def hint(self) -> str:
        return (
            "billing events and usage need a key with ADMIN scope (fal keys create --scope ADMIN)"
        )


class NotAModel(ApiError):
    """The model API refused ids given with ``--model`` (400, 403, 404 or 422): they are
    not hosted models the key can list, most often an app of the account's own. Not the
    key's fault, so not an ``AuthError`` whatever the status."""

    kind = "not a model"

    def __init__(
        self, status: int, error_type: str | None, message: str, url: str, *, models: list[str]
    ) -> None:
        super().__init__(status, error_type, message, url)
        self.models = models

    @property
    def hint(self) -> str:
        ids = ", ".join(self.models)
        return (
            f"{ids} {'is' if len(self.models) == 1 else 'are'} not a model this key can list: "
            "--model takes one of fal's hosted models (fal-ai/flux/dev); "
            "for an app of your own account use --endpoint"
        )


class ApiUnavailable(MirrorError):
    kind = "api unavailable"


class ProxyRefused(MirrorError):
    kind = "proxy refused"

    @property
    def hint(self) -> str:
        return "check the proxy settings (HTTPS_PROXY, NO_PROXY) and the proxy's credentials"


class UntrustedCertificate(MirrorError):
    kind = "certificate not trusted"

    @property
    def hint(self) -> str:
        return (
            "behind a TLS-inspecting proxy or gateway, point SSL_CERT_FILE at your "
            "organisation's CA bundle"
        )


class BadDataError(MirrorError):
    kind = "bad data from api"

    @property
    def hint(self) -> str:
        return (
            "nothing of that page was stored; the next run tries again (report it if it persists)"
        )


class PageTooLarge(BadDataError):
    """A page whose body is over the cap (``RetryPolicy.max_body``); nothing of it was read
    past the cap. ``size``: the length the answer declared (``Content-Length``), if it did."""

    def __init__(self, message: str, *, size: int | None, cap: int) -> None:
        super().__init__(message)
        self.size = size
        self.cap = cap


class StoreError(MirrorError):
    kind = "storage error"


class SchemaTooNewError(StoreError):
    kind = "schema too new"


class OutputError(MirrorError):
    """A file the command was asked to write (``--output``, ``--metrics-file``) could not be
    written: disk full, permissions. Nothing half-written is left at its path."""

    kind = "cannot write"
