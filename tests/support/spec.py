"""Checking requests and answers against the vendored fal OpenAPI description, for the
simulator's tests."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
from openapi_core import OpenAPI
from openapi_core.testing import MockRequest, MockResponse
from werkzeug.datastructures import ImmutableMultiDict

import mirror.simulator

SPEC_PATH = Path(mirror.simulator.__file__).parent / "fal-openapi.json"


class SpecChecker:
    """Validates requests and responses against the vendored fal OpenAPI description.

    The simulator serves at `http://127.0.0.1:PORT/v1`; requests are presented to
    openapi-core as if sent to the spec's server `https://api.fal.ai/v1`.
    """

    def __init__(self, spec_path: Path = SPEC_PATH) -> None:
        self.openapi = OpenAPI.from_dict(json.loads(spec_path.read_text()))

    @staticmethod
    def _request(request: httpx.Request, path: str | None = None) -> MockRequest:
        headers = {k: v for k, v in request.headers.items() if k.lower() != "content-type"}
        mock = MockRequest(
            "https://api.fal.ai", request.method, path or request.url.path, headers=headers
        )
        mock.parameters.query = ImmutableMultiDict(request.url.params.multi_items())
        return mock

    def request_errors(self, request: httpx.Request) -> list[str]:
        """Why the spec rejects this request (empty: it is a valid request)."""
        return [_describe(e) for e in self.openapi.iter_request_errors(self._request(request))]

    def response_errors(self, response: httpx.Response, *, as_path: str | None = None) -> list[str]:
        """Why the spec rejects this response to its request (status, content type, body).

        `as_path` validates against another operation's responses: used for the 404 of a
        path the spec does not describe, whose body must still be fal's error shape.
        """
        mock_response = MockResponse(
            response.content,
            status_code=response.status_code,
            headers=dict(response.headers),
            content_type=response.headers.get("content-type", ""),
        )
        request = self._request(response.request, as_path)
        return [_describe(e) for e in self.openapi.iter_response_errors(request, mock_response)]


def _describe(error: Exception) -> str:
    cause = error.__cause__
    detail = getattr(cause, "schema_errors", None) or cause
    return (
        f"{type(error).__name__}: {error} ({detail!r})"
        if detail
        else f"{type(error).__name__}: {error!r}"
    )
