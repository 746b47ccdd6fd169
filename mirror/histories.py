"""Which of fal's two request histories each sync target is, and finding the models a key used.

fal keeps two histories of a key's requests: the calls to the account's own serverless apps
(``serverless``) and the calls the key made to fal's hosted models (``model``), listed and
counted by sibling operations (``mirror.api.LIST_PATHS``, ``ANALYTICS_PATHS``). A sync
target is one or the other: the user names it with ``--endpoint`` or ``--model``, the
mirror stores it with its history (``sync_targets.history``), and a bare ``mirror sync``
walks every stored target through the operations of its own history.

- ``resolve``: the targets of a run and their histories, from what was named and what is
  stored; an id named as both, or named as the history it is not stored as, is refused
  before anything is called or written.
- ``refusal``: what a run that the API refused targets fails with: for a model target,
  that the id is not a model the key can list (an app's id given with ``--model``), not
  a hint about the key.
- ``discover_models``: the hosted models a key was billed for over a range, from
  ``/models/usage`` (ADMIN scope; a key without it gets a note, not a failure).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from mirror.api import FalClient
from mirror.billing_api import fetch_usage
from mirror.errors import AdminRequired, ApiError, NotAModel, UsageError

log = logging.getLogger("mirror.histories")

__all__ = ["Discovery", "Resolved", "discover_models", "refusal", "resolve"]


@dataclass
class Resolved:
    """A run's targets in order, and the history of each that is not ``serverless``."""

    targets: list[str]
    histories: dict[str, str] = field(default_factory=dict)


def _flag(history: str) -> str:
    return "--model" if history == "model" else "--endpoint"


def resolve(stored: Mapping[str, str], endpoints: Sequence[str], models: Sequence[str]) -> Resolved:
    """The targets named (``endpoints`` then ``models``), or every stored one when none is.

    Refused (``UsageError``, nothing done yet): an id given both as an endpoint and as a
    model, and an id given as the history it is not stored as (its rows and windows are of
    the other operation; the one answer cannot be mixed with the other's).
    """
    both = sorted(set(endpoints) & set(models))
    if both:
        raise UsageError(
            f"{', '.join(both)} given both as --endpoint and as --model: an id is either an "
            "app of your account (--endpoint) or one of fal's hosted models (--model)"
        )
    named = {e: "serverless" for e in endpoints} | {m: "model" for m in models}
    for target, history in named.items():
        was = stored.get(target)
        if was is not None and was != history:
            raise UsageError(
                f"{target} is a sync target of the {was} history (added with {_flag(was)}); "
                f"it cannot be synced with {_flag(history)} too"
            )
    if not named:
        return Resolved(list(stored), {t: h for t, h in stored.items() if h != "serverless"})
    return Resolved(list(named), {t: h for t, h in named.items() if h != "serverless"})


@dataclass
class Discovery:
    """What ``discover_models`` found: the model ids, or why it could not look (``note``)."""

    models: list[str]
    note: str | None = None


def discover_models(
    client: FalClient, start: datetime, end: datetime, *, serverless: Sequence[str] = ()
) -> Discovery:
    """The hosted models the key was billed for in ``[start, end)``, by id, from
    ``/models/usage`` (one line per endpoint and bucket). ``serverless``: ids that are
    targets of the other history, left out (with a note) rather than added twice.

    A key without ADMIN scope is refused usage (403): that is a note, and no models. Any
    other failure is the caller's (the run fails as any API failure does)."""
    try:
        lines = fetch_usage(client, start=start, end=end, timeframe="day")
    except AdminRequired as e:
        return Discovery(
            [],
            f"--all-models could not list the models this key used ({e.message}): "
            "/models/usage needs a key with ADMIN scope; name models with --model instead",
        )
    found = sorted({line.endpoint_id for line in lines})
    clash = [m for m in found if m in serverless]
    note = None
    if clash:
        note = (
            f"--all-models found {', '.join(clash)} in usage, already a target with --endpoint; "
            "left as it is"
        )
    models = [m for m in found if m not in serverless]
    log.info("--all-models: %d models in usage since %s", len(models), start)
    return Discovery(models, note)


def refusal(error: ApiError, *, dropped: Sequence[str], models: Sequence[str]) -> ApiError:
    """The error a run ends with when the API refused some of its targets: ``error`` (the
    run's first), naming the ``dropped`` targets that were not kept; a ``NotAModel`` when
    refused targets include ``models`` (ids given with ``--model``), whose one line says
    the id is not a model the key can list rather than blaming the key."""
    kept = f"; not kept as a sync target: {', '.join(dropped)}" if dropped else ""
    message = f"{error.message}{kept}"
    if models and 400 <= error.status < 500:  # else the run failed of something else first
        return NotAModel(error.status, error.error_type, message, error.url, models=list(models))
    if not dropped:
        return error
    return type(error)(error.status, error.error_type, message, error.url)
