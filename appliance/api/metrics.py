"""`GET /metrics` (Prometheus text exposition) and the middleware that counts and times requests."""

from __future__ import annotations

import time
from typing import Any

import falcon

from appliance import metrics

UNMATCHED = "unmatched"  # the route label of a request no route matched (a 404): no raw paths in labels
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class RequestMetrics:
    """Count and time every request by route *template*, so that label values stay bounded.

    Installed first, so that its clock spans the other middleware and its `process_response` runs
    last, after the error handlers have set the final status.
    """

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.context.metrics_start = time.perf_counter()

    def process_response(self, req: falcon.Request, resp: falcon.Response, resource: Any,
                         req_succeeded: bool) -> None:
        start: float | None = getattr(req.context, "metrics_start", None)
        elapsed = time.perf_counter() - start if start is not None else 0.0
        route = req.uri_template or UNMATCHED
        method = req.method if req.method in METHODS else "other"  # a client can send any token
        metrics.request_answered(route, method, resp.status_code, elapsed)


class Metrics:
    """The scrape target: every process of `hsmca serve` when multi-process, else this one."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        body, content_type = metrics.exposition()
        resp.content_type = content_type
        resp.data = body
        resp.cache_control = ["no-store"]
