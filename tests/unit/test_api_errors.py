"""Errors are mapped once: store errors to 503/409/500, anything unexpected to a 500 that is audited."""

from __future__ import annotations

from typing import Any

import falcon
import pytest
from falcon import testing

from appliance.api import errors
from appliance.api.middleware import RequestContext
from appliance.audit import AuditEvent
from appliance.errors import Forbidden
from appliance.store import InvalidTransition, StoreError, StoreUnavailable


class Recorder:
    def __init__(self) -> None:
        self.events: list[AuditEvent] = []

    def record(self, event: AuditEvent) -> None:
        self.events.append(event)


def app_raising(exc: Exception, recorder: Recorder) -> testing.TestClient:
    class Fails:
        def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
            raise exc

    app = falcon.App(middleware=[RequestContext()])
    errors.install(app, recorder)
    app.add_route("/fails", Fails())
    return testing.TestClient(app)


@pytest.mark.parametrize("exc, status, message", [
    (StoreUnavailable("connection refused"), 503, "connection refused"),
    (InvalidTransition("certificate 5 is issued, not reserved"), 409, "not reserved"),
    (StoreError("secret=xyz in a statement"), 500, "internal"),
    (Forbidden("no"), 403, "no"),
])
def test_store_errors_are_mapped_once(exc: Exception, status: int, message: str) -> None:
    recorder = Recorder()
    resp = app_raising(exc, recorder).simulate_get("/fails", headers={"X-Request-Id": "req-1"})
    assert resp.status_code == status and message in resp.json["message"]
    assert "secret=xyz" not in resp.text  # a 500's cause goes to the log, not to the client
    assert [e.status for e in recorder.events] == ([status] if status >= 500 else [])


def test_an_unexpected_error_is_a_500_with_an_audit_record_and_no_traceback() -> None:
    recorder = Recorder()
    resp = app_raising(ZeroDivisionError("division by zero"), recorder).simulate_get(
        "/fails", headers={"X-Request-Id": "req-2"})
    assert resp.status_code == 500 and resp.json["requestId"] == "req-2" and "Traceback" not in resp.text
    [event] = recorder.events
    assert event.request_id == "req-2" and event.decision == "error" and event.status == 500
    assert event.reasons == ("internal error (ZeroDivisionError)",) and event.action == "http.GET /fails"


def test_an_error_the_pipeline_audited_is_not_audited_twice() -> None:
    recorder = Recorder()
    exc: Any = RuntimeError("already written down")
    exc.audited = True
    assert app_raising(exc, recorder).simulate_get("/fails").status_code == 500
    assert recorder.events == []
