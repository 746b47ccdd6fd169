"""The output of `mirror verify`: a ``mirror.verify.VerifyReport`` as text or as JSON.

``mirror.verify`` computes the report and never imports this module; the command
(``mirror.commands_verify``) renders what it returns. docs/verify.md describes both.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mirror.redact import printable
from mirror.timeparse import to_text

if TYPE_CHECKING:
    from mirror.verify import TargetReport, VerifyReport


def report_json(report: VerifyReport) -> dict[str, Any]:
    """The whole run: totals over the targets, then each target's own."""

    def total(name: str) -> int:
        return sum(getattr(t, name) for t in report.targets)

    def found(name: str) -> int:
        return sum(getattr(t, name).count for t in report.targets)

    return {
        "ok": report.ok,
        "since": to_text(report.since) if report.since else None,
        "until": to_text(report.until),
        "mode": report.mode,
        "analytics_fields": report.analytics_fields,
        "sample": None if report.sample is None else {"hours": report.sample, "seed": report.seed},
        "repair": report.repair,
        "delete_extra": report.delete_extra,
        "hours": total("hours"),
        "hours_walked": total("hours_walked"),
        "hours_agreed": total("hours_agreed"),
        "missing": found("missing"),
        "different": found("different"),
        "extra": found("extra"),
        "repaired": {
            "inserted": total("inserted"),
            "updated": total("updated"),
            "deleted": total("deleted"),
        },
        "remaining": report.remaining,
        "api_calls": report.api_calls,
        "retries": report.retries,
        "seconds": round(report.seconds, 3),
        "notes": report.notes,
        "targets": [target_json(t) for t in report.targets],
    }


def target_json(t: TargetReport) -> dict[str, Any]:
    return {
        "target": t.target,
        "hours": t.hours,
        "hours_walked": t.hours_walked,
        "hours_agreed": t.hours_agreed,
        "analytics": t.analytics,
        "api_calls": t.api_calls,
        "missing": {"count": t.missing.count, "examples": t.missing.examples},
        "different": {
            "count": t.different.count,
            "examples": [{"request_id": k, "fields": v} for k, v in t.different.smallest],
        },
        "extra": {"count": t.extra.count, "examples": t.extra.examples},
        "hours_with_differences": t.hours_with_differences,
        "unstable_hours": t.unstable_hours,
        "repaired": {
            "inserted": t.inserted,
            "updated": t.updated,
            "deleted": t.deleted,
        },
        "remaining": t.remaining,
    }


def report_text(report: VerifyReport) -> str:
    """The human report: one paragraph per target, then one line for the run."""
    lines: list[str] = []
    for t in report.targets:
        lines.extend(_target_lines(t, report.mode))
    n = sum(t.hours for t in report.targets)
    walked = sum(t.hours_walked for t in report.targets)
    found = sum(t.found for t in report.targets)
    bad_hours = sum(len(t.hours_with_differences) for t in report.targets)
    how = f"{walked} re-walked"
    if report.mode == "analytics":
        how += f", {sum(t.hours_agreed for t in report.targets)} agreed with analytics"
        if report.analytics_fields:
            how += f" (buckets count by {' or '.join(report.analytics_fields)})"
    scope = f"{n} hour{'s' if n != 1 else ''}"
    if report.sample is not None:
        scope = f"a sample of {scope} (--seed {report.seed})"
    tail = f"{report.api_calls} API calls"
    if report.retries:
        tail += f" ({report.retries} retried)"
    tail += f" in {report.seconds:.1f}s"
    if found == 0:
        result = "the mirror equals the server"
    else:
        result = f"{found} difference{'s' if found != 1 else ''} in {bad_hours} hour{'s' if bad_hours != 1 else ''}"
        fixed = sum(t.inserted + t.updated + t.deleted for t in report.targets)
        if report.repair:
            result += f", {fixed} repaired"
        result += f", {report.remaining} remain" if report.remaining else ", none remain"
    if report.unstable:
        result += f"; {report.unstable} hours kept changing while walked (run verify again)"
    lines.append(f"verified {scope}: {how}; {result}; {tail}")
    return "\n".join(lines)


def _target_lines(t: TargetReport, mode: str) -> list[str]:
    if t.hours == 0:
        return [f"{t.target}: no completed hours in range"]
    head = f"{t.target}: {t.hours} hour{'s' if t.hours != 1 else ''}"
    if mode == "analytics" and t.analytics == "compared":
        head += f", {t.hours_agreed} agreed with analytics, {t.hours_walked} re-walked"
    elif mode == "analytics":
        head += f", analytics {t.analytics}: {t.hours_walked} re-walked"
    else:
        head += f", {t.hours_walked} re-walked"
    head += f" ({t.api_calls} API call{'s' if t.api_calls != 1 else ''})"
    if not t.found:
        return [head + ": no differences"]
    out = [head + ":"]
    if t.missing.count:
        shown = printable(", ".join(t.missing.examples))
        out.append(f"  missing    {t.missing.count:>6}  e.g. {shown}")
    if t.different.count:
        shown = printable(", ".join(f"{k} ({', '.join(v)})" for k, v in t.different.smallest))
        out.append(f"  different  {t.different.count:>6}  e.g. {shown}")
    if t.extra.count:
        shown = printable(", ".join(t.extra.examples))
        out.append(f"  extra      {t.extra.count:>6}  e.g. {shown}")
    if t.inserted or t.updated or t.deleted:
        out.append(f"  repaired: {t.inserted} inserted, {t.updated} updated, {t.deleted} deleted")
    if t.extra.count > t.deleted:
        out.append("  extras are kept; --repair --delete-extra removes them")
    shown_hours = t.hours_with_differences[:5]
    more = len(t.hours_with_differences) - len(shown_hours)
    out.append(f"  in hours {', '.join(shown_hours)}" + (f" and {more} more" if more > 0 else ""))
    return out
