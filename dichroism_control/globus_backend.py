"""`GlobusBackend`: the `Backend` protocol on Globus Flows, Timers and Compute (globus-sdk).

Also the translation of SDK errors into the transient/permanent errors the callers act on,
the transport that reads the proxy environment once per origin, and the Compute function
registration payload (built by globus-compute-sdk itself).
"""

from __future__ import annotations

import functools
import json
import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

from dichroism_control.backend import FlowSpec, RunRequest
from dichroism_control.errors import (
    AuthRequiredError,
    BackendError,
    PermanentBackendError,
    TransientBackendError,
)
from dichroism_control.ledger import Identity
from dichroism_control.ratelimit import RateLimiter

if TYPE_CHECKING:
    import globus_sdk
    from globus_sdk.transport import RequestsTransport

T = TypeVar("T")

# Every role through which a run can be shared with the caller, as the Flows API names them
# for `GET /runs?filter_roles=` (globus-sdk-javascript src/open-api/types/flows.ts,
# `filter_roles`). The SDK's docstring lists singular forms (services/flows/client.py:612-618)
# that belong to the deprecated `filter_role`.
RUN_ROLES = ("run_owner", "run_managers", "run_monitors", "flow_run_managers", "flow_run_monitors")


def _api_error_message(error: globus_sdk.GlobusAPIError) -> str:
    detail = error.message or error.text or ""
    if isinstance(error.raw_json, dict):
        # Flows' 422s put the real reasons in `error.detail` / `detail`.
        nested = error.raw_json.get("error")
        if isinstance(nested, dict) and nested.get("detail"):
            detail = (
                json.dumps(nested["detail"])
                if not isinstance(nested["detail"], str)
                else (nested["detail"])
            )
        elif error.raw_json.get("detail"):
            raw = error.raw_json["detail"]
            detail = raw if isinstance(raw, str) else json.dumps(raw)
    return f"{error.http_status} {error.code}: {detail}".strip()


def translate_error(exc: Exception) -> BackendError:
    """An SDK exception as a transient / permanent backend error the callers can act on."""
    import globus_sdk

    if isinstance(exc, globus_sdk.GlobusAPIError):
        message = _api_error_message(exc)
        if exc.http_status == 403 and _is_auth_requirement(exc):
            # A Globus Auth requirements error (GARE: ConsentRequired, a session policy):
            # a person must log in or consent; retrying the same token cannot help.
            return AuthRequiredError(
                f"{message}: Globus needs a new login or consent; run `dichroism login`"
                " (a service client: `dichroism login --force`)"
            )
        if exc.http_status == 429 or exc.http_status >= 500:
            retry_after = exc.headers.get("Retry-After") if exc.headers else None
            return TransientBackendError(
                message, retry_after=_parse_retry_after(retry_after), http_status=exc.http_status
            )
        return PermanentBackendError(message, http_status=exc.http_status)
    if isinstance(exc, globus_sdk.NetworkError):
        return TransientBackendError(network_message(exc))
    return BackendError(str(exc))


def _is_auth_requirement(error: globus_sdk.GlobusAPIError) -> bool:
    from globus_sdk.gare import is_gare

    return is_gare(error)


# SDK service name -> (what people call it, its GLOBUS_SDK_SERVICE_URL_* suffix).
_SERVICES = {
    "auth": ("Globus Auth", "AUTH"),
    "flows": ("Globus Flows", "FLOWS"),
    "timer": ("Globus Timers", "TIMER"),
    "compute": ("Globus Compute", "COMPUTE"),
    "transfer": ("Globus Transfer", "TRANSFER"),
}


def network_message(exc: globus_sdk.NetworkError) -> str:
    """Which service could not be reached, why, and what to check (one line)."""
    import globus_sdk
    from globus_sdk.config import get_service_url

    underlying = exc.underlying_exception
    request = getattr(underlying, "request", None)
    url = str(getattr(request, "url", "") or "")
    name, suffix, base = "a Globus service", "<SERVICE>", url
    for service, (label, env) in _SERVICES.items():
        service_url = get_service_url(service)
        if url.startswith(service_url.rstrip("/")):
            name, suffix, base = label, env, service_url
            break
    text = str(underlying)
    if "Connection refused" in text or "Errno 111" in text:
        why = "connection refused"
    elif isinstance(exc, globus_sdk.GlobusTimeoutError):
        why = "timed out"
    elif "Name or service not known" in text or "NameResolutionError" in text:
        why = "host name not resolved"
    elif "SSL" in text or "certificate" in text:
        why = "TLS/certificate error"
    else:
        why = type(underlying).__name__
    return (
        f"{name} unreachable at {base or 'its URL'} ({why}); check this host's network and "
        f"proxy (HTTPS_PROXY, NO_PROXY), GLOBUS_SDK_ENVIRONMENT and "
        f"GLOBUS_SDK_SERVICE_URL_{suffix}, and the Globus status page"
    )


def translate_errors(call: Callable[..., T]) -> Callable[..., T]:
    @functools.wraps(call)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        import globus_sdk

        try:
            return call(*args, **kwargs)
        except (globus_sdk.GlobusAPIError, globus_sdk.NetworkError) as exc:
            raise translate_error(exc) from None
        except globus_sdk.GlobusSDKUsageError as exc:
            raise BackendError(str(exc)) from None

    return wrapper


def _parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        from email.utils import parsedate_to_datetime

        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        return max(0.0, (when - datetime.now(when.tzinfo)).total_seconds())


# -- proxies, resolved once per origin ----------------------------------------------------
def environment_once_transport() -> RequestsTransport:
    """A globus-sdk transport whose session resolves proxies once per origin.

    The SDK calls `Session.send` without proxies, so requests re-resolves them from
    os.environ on every request (`resolve_proxies`: several scans of the environment, about
    a quarter of the watcher's CPU per run). A service's environment does not change while it
    runs, so requests' own answer is memoised per origin: HTTP(S)_PROXY, NO_PROXY rules and
    redirects behave exactly as before.
    """
    import requests
    from globus_sdk.transport import RequestsTransport
    from requests.utils import resolve_proxies

    class EnvironmentOnceSession(requests.Session):
        def __init__(self) -> None:
            super().__init__()
            self._proxies: dict[tuple[str, str], dict[str, str]] = {}

        def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
            if "proxies" not in kwargs:
                parts = urlsplit(str(request.url))
                origin = (parts.scheme, parts.netloc)
                proxies = self._proxies.get(origin)
                if proxies is None:
                    proxies = resolve_proxies(request, self.proxies, self.trust_env)
                    self._proxies[origin] = proxies
                kwargs["proxies"] = dict(proxies)
            return super().send(request, **kwargs)

    transport = RequestsTransport()
    transport.session.close()
    transport.session = EnvironmentOnceSession()
    return transport


class GlobusBackend:
    """Globus Flows, Timers and Compute, through one GlobusApp.

    Clients are built on first use (importing them costs ~250 ms; `--help` must stay fast),
    with the SDK's own retries kept short: the launcher owns backoff, with its queue in the
    ledger rather than in a sleeping HTTP call. Every client's transport reads the
    environment (proxies, CA bundle) once per origin (`environment_once_transport`).
    """

    kind = "globus"

    def __init__(
        self,
        app: globus_sdk.GlobusApp,
        *,
        timer_flow_ids: list[str] | None = None,
        max_retries: int = 1,
        run_limiter: RateLimiter | None = None,
    ) -> None:
        self._app = app
        # Paces run_flow across every thread of the process (config submit.
        # max_run_starts_per_second); None: unpaced.
        self.run_limiter = run_limiter
        self._timer_flow_ids = [f for f in (timer_flow_ids or []) if f]
        self._max_retries = max_retries
        self._specific: dict[str, globus_sdk.SpecificFlowClient] = {}
        self._specific_lock = threading.Lock()

    def _transport(self) -> RequestsTransport:
        return environment_once_transport()

    def _retry_config(self) -> Any:
        from globus_sdk.transport import RetryConfig

        return RetryConfig(max_retries=self._max_retries, max_sleep=2)

    @functools.cached_property
    def flows(self) -> globus_sdk.FlowsClient:
        import globus_sdk

        return globus_sdk.FlowsClient(
            app=self._app, retry_config=self._retry_config(), transport=self._transport()
        )

    @functools.cached_property
    def timers(self) -> globus_sdk.TimersClient:
        import globus_sdk

        client = globus_sdk.TimersClient(
            app=self._app, retry_config=self._retry_config(), transport=self._transport()
        )
        # Every flow a timer may run must be in the Timers consent before the first Timers
        # token is fetched (GLOBUS_NOTES: the Timers consent trap).
        if self._timer_flow_ids:
            client.add_app_flow_user_scope(self._timer_flow_ids)
        return client

    @functools.cached_property
    def compute(self) -> globus_sdk.ComputeClientV3:
        import globus_sdk

        # ComputeClientV3 honours GLOBUS_SDK_SERVICE_URL_COMPUTE; globus_compute_sdk.Client
        # does not (GLOBUS_NOTES), so registration goes through this client.
        return globus_sdk.ComputeClientV3(
            app=self._app, retry_config=self._retry_config(), transport=self._transport()
        )

    def _flow_client(self, flow_id: str) -> globus_sdk.SpecificFlowClient:
        import globus_sdk

        client = self._specific.get(flow_id)
        if client is None:
            # Workers race here on the first runs: one client (one connection pool) per flow.
            with self._specific_lock:
                client = self._specific.get(flow_id)
                if client is None:
                    client = globus_sdk.SpecificFlowClient(
                        flow_id,
                        app=self._app,
                        retry_config=self._retry_config(),
                        transport=self._transport(),
                    )
                    self._specific[flow_id] = client
        return client

    def caller_identity(self) -> Identity | None:
        """Who the calls are made as, without an HTTP call (None: not logged in yet).

        A client acts as its own identity, whose id is its client id. A person's identity id
        is what the SDK decoded from the id_token (`sub`) when they logged in and keeps with
        the stored tokens (token_storage/base.py:99-124, validating_token_storage/
        storage.py:26-40): cheaper than Auth's userinfo, and available offline.
        """
        import globus_sdk

        if isinstance(self._app, globus_sdk.ClientApp):
            return Identity(str(self._app.client_id), "client")
        identity = self._app.token_storage.identity_id
        return Identity(str(identity), "user") if identity else None

    # runs ------------------------------------------------------------------------------
    @translate_errors
    def run_flow(self, request: RunRequest) -> dict[str, Any]:
        import globus_sdk

        if self.run_limiter is not None:
            self.run_limiter.acquire()
        response = self._flow_client(request.flow_id).run_flow(
            request.body,
            label=request.label,
            tags=request.tags,
            run_monitors=request.run_monitors or globus_sdk.MISSING,
            run_managers=request.run_managers or globus_sdk.MISSING,
            activity_notification_policy={"status": request.notify_on},
        )
        return dict(response.data)

    def iter_runs(
        self, *, flow_ids: list[str], filter_roles: Sequence[str] = ()
    ) -> Iterator[dict[str, Any]]:
        """The flows' runs, newest first. Without `filter_roles` Flows lists only the runs
        the caller owns; `RUN_ROLES` adds those shared with the caller."""
        marker: str | None = None
        while True:
            page = self._list_runs_page(flow_ids, marker, filter_roles)
            yield from page.get("runs", [])
            marker = page.get("marker")
            if not page.get("has_next_page") or not marker:
                return

    @translate_errors
    def _list_runs_page(
        self, flow_ids: list[str], marker: str | None, filter_roles: Sequence[str] = ()
    ) -> dict[str, Any]:
        import globus_sdk

        response = self.flows.list_runs(
            filter_flow_id=flow_ids,
            filter_roles=list(filter_roles) if filter_roles else globus_sdk.MISSING,
            marker=marker if marker is not None else globus_sdk.MISSING,
            query_params={"orderby": "start_time DESC"},
        )
        return dict(response.data)

    @translate_errors
    def get_run(self, run_id: str) -> dict[str, Any]:
        return dict(self.flows.get_run(run_id).data)

    def iter_run_logs(self, run_id: str) -> Iterator[dict[str, Any]]:
        marker: str | None = None
        while True:
            page = self._run_logs_page(run_id, marker)
            yield from page.get("entries", [])
            marker = page.get("marker")
            if not page.get("has_next_page") or not marker:
                return

    @translate_errors
    def _run_logs_page(self, run_id: str, marker: str | None) -> dict[str, Any]:
        import globus_sdk

        response = self.flows.get_run_logs(
            run_id, limit=100, marker=marker if marker is not None else globus_sdk.MISSING
        )
        return dict(response.data)

    @translate_errors
    def cancel_run(self, run_id: str) -> dict[str, Any]:
        return dict(self.flows.cancel_run(run_id).data)

    # timers ----------------------------------------------------------------------------
    @translate_errors
    def create_flow_timer(
        self, *, name: str, run_at: datetime, request: RunRequest
    ) -> dict[str, Any]:
        import globus_sdk

        if run_at.tzinfo is None:
            # OnceTimerSchedule reads a naive datetime as local time (GLOBUS_NOTES).
            raise ValueError("run_at must be timezone-aware")
        return self._create_timer(name, globus_sdk.OnceTimerSchedule(datetime=run_at), request)

    @translate_errors
    def create_recurring_flow_timer(
        self, *, name: str, interval_seconds: int, start: datetime, request: RunRequest
    ) -> dict[str, Any]:
        import globus_sdk

        if start.tzinfo is None:
            raise ValueError("start must be timezone-aware")
        schedule = globus_sdk.RecurringTimerSchedule(
            interval_seconds=int(interval_seconds), start=start
        )
        return self._create_timer(name, schedule, request)

    def _create_timer(self, name: str, schedule: Any, request: RunRequest) -> dict[str, Any]:
        """A flow timer whose run starts from the request's FlowStartDocument."""
        import globus_sdk

        if request.flow_id not in self._timer_flow_ids:
            raise BackendError(
                f"flow {request.flow_id} was not declared for timers when the backend was built"
            )
        timer = globus_sdk.FlowTimer(
            flow_id=request.flow_id, name=name, schedule=schedule, body=request.timer_body()
        )
        data = dict(self.timers.create_timer(timer).data)
        return dict(data.get("timer", data))

    def iter_timers(self) -> Iterator[dict[str, Any]]:
        yield from self._list_jobs().get("jobs", [])

    @translate_errors
    def _list_jobs(self) -> dict[str, Any]:
        return dict(self.timers.list_jobs().data)

    @translate_errors
    def delete_timer(self, timer_id: str) -> dict[str, Any]:
        return dict(self.timers.delete_job(timer_id).data)

    # deployment ------------------------------------------------------------------------
    def get_flow(self, flow_id: str) -> dict[str, Any] | None:
        import globus_sdk

        try:
            return dict(self.flows.get_flow(flow_id).data)
        except globus_sdk.GlobusAPIError as exc:
            if exc.http_status == 404:
                return None
            raise translate_error(exc) from None
        except globus_sdk.NetworkError as exc:
            raise translate_error(exc) from None

    @translate_errors
    def create_flow(self, spec: FlowSpec) -> dict[str, Any]:
        fields = spec.fields()
        return dict(
            self.flows.create_flow(
                fields.pop("title"), fields.pop("definition"), fields.pop("input_schema"), **fields
            ).data
        )

    @translate_errors
    def update_flow(self, flow_id: str, spec: FlowSpec) -> dict[str, Any]:
        return dict(self.flows.update_flow(flow_id, **spec.fields()).data)

    def validate_flow(self, definition: dict[str, Any], input_schema: dict[str, Any]) -> list[str]:
        import globus_sdk

        try:
            self.flows.validate_flow(definition, input_schema=input_schema)
        except globus_sdk.GlobusAPIError as exc:
            if exc.http_status in (400, 422):
                return _validation_messages(exc)
            raise translate_error(exc) from None
        except globus_sdk.NetworkError as exc:
            raise translate_error(exc) from None
        return []

    @translate_errors
    def register_function(self, *, name: str, source: str, description: str) -> str:
        payload = function_registration_payload(name=name, source=source, description=description)
        return str(self.compute.register_function(payload).data["function_uuid"])


def _validation_messages(error: globus_sdk.GlobusAPIError) -> list[str]:
    body = error.raw_json if isinstance(error.raw_json, dict) else {}
    detail = body.get("error", {}).get("detail") if isinstance(body.get("error"), dict) else None
    detail = detail if detail is not None else body.get("detail")
    if isinstance(detail, list):
        messages = []
        for item in detail:
            if isinstance(item, dict):
                loc = ".".join(str(p) for p in item.get("loc", []))
                messages.append(f"{loc}: {item.get('msg', item)}" if loc else str(item.get("msg")))
            else:
                messages.append(str(item))
        return messages
    return [str(detail) if detail else _api_error_message(error)]


def function_registration_payload(*, name: str, source: str, description: str) -> dict[str, Any]:
    """The body `Client.register_source_code` would post, built by globus-compute-sdk itself.

    Imported lazily: globus_compute_sdk costs ~0.4 s and only deploy needs it.
    """
    import platform

    from globus_compute_sdk import __version__ as compute_sdk_version
    from globus_compute_sdk.sdk.client import (
        FunctionRegistrationData,
        FunctionRegistrationMetadata,
    )

    data = FunctionRegistrationData(
        function_name=name,
        function_code=source,
        description=description,
        metadata=FunctionRegistrationMetadata(
            python_version=platform.python_version(), sdk_version=compute_sdk_version
        ),
        serialized=False,
    )
    payload: dict[str, Any] = data.to_dict()  # type: ignore[no-untyped-call]
    return payload
