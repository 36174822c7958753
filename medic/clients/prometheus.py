"""PromQL client: instant and range queries against Prometheus's HTTP API.

Runbooks ask Prometheus whether a problem is real and whether a recovery worked, so the two ways
this can go wrong are kept apart: no answer at all (``PrometheusUnreachable``: fix the URL or start
Prometheus) and an answer that refuses the query (``PromQLError``: fix the query; Prometheus's own
parse error is kept verbatim). Values that must be interpolated into a query go through
``promql_string``/``label_matcher`` (from `medic.core.templates`, re-exported here) so that free text can
never change the query's shape.
"""

from __future__ import annotations

import logging
import math
from datetime import datetime, timedelta
from typing import Any

import httpx
from pydantic import BaseModel, Field

from medic.core.net import tls_verifying_context
from medic.core.templates import label_matcher, promql_string  # the quoting lives with the other quoting
from medic.errors import PrometheusError, PrometheusUnreachable, PromQLError
from medic.settings import get_settings

__all__ = [
    "PrometheusClient",
    "Sample",
    "Series",
    "label_matcher",
    "promql_string",
]

log = logging.getLogger(__name__)

Time = float | datetime


class Sample(BaseModel):
    """One value of an instant query (a vector element, or a scalar/string result with no labels)."""

    labels: dict[str, str] = Field(default_factory=dict)
    value: float
    timestamp: float
    text: str | None = Field(None, description="the raw value of a `string` result, else None")


class Series(BaseModel):
    """One series of a range query: its labels and (timestamp, value) points, oldest first."""

    labels: dict[str, str] = Field(default_factory=dict)
    points: list[tuple[float, float]] = Field(default_factory=list)


def _timestamp(t: Time) -> float:
    return t.timestamp() if isinstance(t, datetime) else float(t)


def _duration(step: float | timedelta) -> float:
    return step.total_seconds() if isinstance(step, timedelta) else float(step)


def _number(raw: str) -> float:
    """Prometheus sends sample values as strings ("1", "NaN", "+Inf")."""
    try:
        return float(raw)
    except ValueError:
        return math.nan


_NOT_READY = (502, 503, 504)  # no API body and one of these: not there *yet*, worth the callers' retries


class PrometheusClient:
    """A small synchronous client; one HTTP connection pool per client. Use as a context manager."""

    def __init__(self, url: str | None = None, *, timeout: float | None = None) -> None:
        settings = get_settings()
        url = url or settings.prometheus_url
        if not url:
            raise PrometheusUnreachable(
                "no Prometheus URL configured: start the lab (`medic lab up`) or set MEDIC_PROMETHEUS_URL"
            )
        self.url = url.rstrip("/")
        self.timeout = timeout if timeout is not None else settings.prometheus_timeout
        self._http = httpx.Client(base_url=self.url, timeout=self.timeout, verify=tls_verifying_context())

    def __enter__(self) -> "PrometheusClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def __repr__(self) -> str:
        return f"PrometheusClient({self.url!r}, timeout={self.timeout})"

    # -- queries ---------------------------------------------------------------------------------

    def query(self, promql: str, *, at: Time | None = None) -> list[Sample]:
        """An instant query. A vector gives one Sample per series; a scalar or string gives one Sample."""
        params: dict[str, Any] = {"query": promql}
        if at is not None:
            params["time"] = _timestamp(at)
        data = self._api("/api/v1/query", params, promql)
        kind, result = data["resultType"], data["result"]
        if kind == "vector":
            return [
                Sample(labels=item["metric"], value=_number(item["value"][1]), timestamp=item["value"][0])
                for item in result
            ]
        if kind == "scalar":
            return [Sample(value=_number(result[1]), timestamp=result[0])]
        if kind == "string":
            return [Sample(value=_number(result[1]), timestamp=result[0], text=result[1])]
        raise PromQLError(
            f"query {promql!r} returned a {kind} (a range vector); instant queries need an instant "
            f"vector, scalar or string — drop the [range] or use query_range"
        )

    def query_range(
        self, promql: str, *, start: Time, end: Time, step: float | timedelta
    ) -> list[Series]:
        """A range query: every series with its points between start and end, one every step seconds."""
        params = {"query": promql, "start": _timestamp(start), "end": _timestamp(end), "step": _duration(step)}
        data = self._api("/api/v1/query_range", params, promql)
        return [
            Series(labels=item.get("metric", {}), points=[(t, _number(v)) for t, v in item["values"]])
            for item in data["result"]
        ]

    def value(self, promql: str) -> float | None:
        """The single value of a query, or None when it has no result (e.g. the alert is not firing)."""
        samples = self.query(promql)
        if not samples:
            return None
        if len(samples) > 1:
            shown = ", ".join(str(s.labels) for s in samples[:3])
            raise PromQLError(
                f"query {promql!r} returned {len(samples)} series ({shown} …) where one value was expected; "
                f"aggregate it (sum/max by ()) or add label matchers"
            )
        return samples[0].value

    def healthy(self) -> bool:
        """True when Prometheus answers its readiness endpoint."""
        try:
            return self._http.get("/-/ready").status_code == 200
        except httpx.HTTPError:
            return False

    # -- transport -------------------------------------------------------------------------------

    def _api(self, path: str, params: dict[str, Any], promql: str) -> dict[str, Any]:
        """POST (no URL length limit for long queries) and unwrap Prometheus's JSON envelope."""
        try:
            response = self._http.post(path, data=params)
        except httpx.TimeoutException as exc:
            raise PrometheusUnreachable(
                f"Prometheus at {self.url} did not answer within {self.timeout:g} s ({type(exc).__name__}); "
                f"check it is running (`medic lab status`) or raise MEDIC_PROMETHEUS_TIMEOUT"
            ) from exc
        except httpx.TransportError as exc:
            raise PrometheusUnreachable(
                f"cannot reach Prometheus at {self.url}: {exc or type(exc).__name__}; start it "
                f"(`medic lab up`) or point MEDIC_PROMETHEUS_URL at a running Prometheus"
            ) from exc
        try:
            body = response.json()
        except ValueError:
            body = None
        if (not isinstance(body, dict) or "status" not in body) and response.status_code in _NOT_READY:
            raise PrometheusUnreachable(  # a restarting Prometheus answers 503 until its TSDB is loaded
                f"Prometheus at {self.url} is not ready (HTTP {response.status_code} on {path}): starting up, "
                f"or a proxy in front of it has no Prometheus behind; try again shortly"
            )
        if not isinstance(body, dict) or "status" not in body:
            raise PrometheusError(
                f"{self.url}{path} answered HTTP {response.status_code} without a Prometheus API body; "
                f"is MEDIC_PROMETHEUS_URL the Prometheus server's base URL?"
            )
        if body["status"] != "success":
            error, error_type = body.get("error", "?"), body.get("errorType", "?")
            log.debug("prometheus refused %r: %s: %s", promql, error_type, error)
            if response.status_code in (400, 422):
                exc = PromQLError(f"Prometheus rejected the query {promql!r}: {error_type}: {error}")
                exc.query, exc.error, exc.error_type = promql, error, error_type
                raise exc
            raise PrometheusError(
                f"Prometheus at {self.url} could not run {promql!r} (HTTP {response.status_code}, "
                f"{error_type}): {error}"
            )
        for warning in body.get("warnings") or ():
            log.warning("prometheus warning for %r: %s", promql, warning)
        return body["data"]
