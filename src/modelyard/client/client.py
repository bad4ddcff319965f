"""``modelyard.Client``: every CLI operation, for Python code.

It finds a local server by itself: the URLs in ``<state dir>/server.json`` and the token in
``<state dir>/token`` (state dir ``./.modelyard`` unless ``MODELYARD_STATE_DIR`` or ``state_dir``
says otherwise). ``MODELYARD_URL``, ``MODELYARD_GATEWAY_URL`` and ``MODELYARD_TOKEN`` override them.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote

import httpx

from modelyard.client.patience import Patient
from modelyard.client.rollouts import RolloutsMixin
from modelyard.errors import ModelyardError, PlatformError, UserError, from_payload
from modelyard.settings import DEFAULT_STATE_DIR, INVOKE_TOKEN_FILE, SERVER_FILE, read_token
from modelyard.spec import Document, load_documents
from modelyard.spec.resources import TransformJobSpec

#: the statuses a transform job ends in (it changes no more)
TRANSFORM_FINAL = frozenset({"Stopped", "Completed", "CompletedWithFailures", "Failed"})
#: how long ``wait_transform`` waits through a control plane it cannot reach (a restart)


@dataclass(frozen=True, slots=True)
class InvokeResult:
    body: bytes
    content_type: str
    variant: str
    custom_attributes: str | None

    def json(self) -> Any:
        return json.loads(self.body)


def locate_server(state_dir: str | Path | None = None) -> tuple[str | None, str | None, str | None]:
    """(api_url, gateway_url, token) from the environment and the state directory."""
    folder = Path(state_dir or os.environ.get("MODELYARD_STATE_DIR") or DEFAULT_STATE_DIR)
    api = os.environ.get("MODELYARD_URL")
    gateway = os.environ.get("MODELYARD_GATEWAY_URL")
    try:
        info = json.loads((folder / SERVER_FILE).read_text())
        api = api or info.get("api_url")
        gateway = gateway or info.get("gateway_url")
    except (OSError, ValueError):
        pass
    token = os.environ.get("MODELYARD_TOKEN") or read_token(folder)
    return api, gateway, token


def _login_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name (a container without a passwd entry)
        return "unknown"


class Client(RolloutsMixin):
    """The control plane's API and the gateway's; rollouts, history and weights are
    :class:`~modelyard.client.rollouts.RolloutsMixin`'s."""

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        gateway_url: str | None = None,
        invoke_token: str | None = None,
        state_dir: str | Path | None = None,
        timeout_s: float = 70.0,
        user: str | None = None,
    ) -> None:
        """``user``: who the server records as the author of deployments (the login name by
        default)."""
        found_api, found_gateway, found_token = locate_server(state_dir)
        api = url or found_api
        if not api:
            raise UserError(
                "no Modelyard server found: start one with `modelyard server`, or pass the URL "
                "(--url / MODELYARD_URL)"
            )
        self.url = api.rstrip("/")
        self.gateway_url = (gateway_url or found_gateway or "").rstrip("/")
        self.token = token or found_token
        self.invoke_token = invoke_token or os.environ.get("MODELYARD_INVOKE_TOKEN")
        if self.invoke_token is None:
            folder = Path(state_dir or os.environ.get("MODELYARD_STATE_DIR") or DEFAULT_STATE_DIR)
            self.invoke_token = read_token(folder, INVOKE_TOKEN_FILE)
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        # (percent-encoded: a header is ASCII; the server decodes it)
        headers["X-Modelyard-User"] = quote((user or _login_name())[:64], safe="")
        self._http = httpx.Client(
            base_url=self.url, headers=headers, timeout=timeout_s, trust_env=False
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # plumbing
    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            resp = self._http.request(method, path, **kwargs)
        except httpx.ConnectError as exc:
            raise PlatformError(
                f"cannot reach the Modelyard control plane at {self.url}: "
                "is `modelyard server` running?"
            ) from exc
        except httpx.HTTPError as exc:
            raise PlatformError(f"request to {self.url}{path} failed: {exc}") from exc
        try:
            payload = resp.json()
        except ValueError:
            payload = {"error": {"code": "platform_error", "message": resp.text}}
        if resp.status_code >= 400:
            raise from_payload(payload, resp.status_code)
        return payload

    # resources
    def apply(self, documents: list[Document] | list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Create or update resources; returns what happened to each."""
        raws = [
            d if isinstance(d, dict) else d.model_dump(mode="json", by_alias=True)
            for d in documents
        ]
        return list(self._call("POST", "/api/v1/apply", json={"documents": raws})["results"])

    def apply_file(self, path: str | Path) -> list[dict[str, Any]]:
        return self.apply(read_documents(path))

    def list_models(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/api/v1/models")["items"])

    def get_model(self, name: str) -> dict[str, Any]:
        return dict(self._call("GET", f"/api/v1/models/{name}"))

    def delete_model(self, name: str) -> None:
        self._call("DELETE", f"/api/v1/models/{name}")

    def list_endpoints(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/api/v1/endpoints")["items"])

    def describe_endpoint(self, name: str) -> dict[str, Any]:
        return dict(self._call("GET", f"/api/v1/endpoints/{name}"))

    def scaling_activities(
        self, name: str, *, limit: int = 100, variant: str | None = None
    ) -> list[dict[str, Any]]:
        """The endpoint's scaling activities, newest first: each ``{at, variant, from, to,
        cause, details}`` (a change of bounds by a scheduled action has ``from == to``)."""
        params: dict[str, Any] = {"limit": limit}
        if variant is not None:
            params["variant"] = variant
        path = f"/api/v1/endpoints/{name}/scaling-activities"
        return list(self._call("GET", path, params=params)["items"])

    def rollback_endpoint(self, name: str, revision: int) -> dict[str, Any]:
        """Roll out revision ``revision`` again (as a new revision); returns what happened."""
        return dict(
            self._call("POST", f"/api/v1/endpoints/{name}/rollback", json={"revision": revision})
        )

    def delete_endpoint(self, name: str, *, wait: bool = True, timeout_s: float = 120) -> None:
        self._call("DELETE", f"/api/v1/endpoints/{name}")
        if not wait:
            return
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                self.describe_endpoint(name)
            except ModelyardError as exc:
                if getattr(exc, "http_status", 0) == 404:
                    return
                raise
            time.sleep(0.2)  # polling the control plane
        raise PlatformError(f"endpoint {name!r} was not deleted within {timeout_s:g} s")

    def wait_endpoint(
        self,
        name: str,
        *,
        timeout_s: float = 300,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
        revision: int | None = None,
    ) -> dict[str, Any]:
        """Poll until the endpoint is InService (on ``revision`` if given) with the gateway
        routing to it, or Failed."""
        deadline = time.monotonic() + timeout_s
        while True:
            view = self.describe_endpoint(name)
            if on_progress:
                on_progress(view)
            settled = view["status"] == "Failed" or (
                view["status"] == "InService" and view.get("routed", True)
            )
            if revision is not None and settled and view["status"] == "InService":
                settled = view["active_revision"] == revision or view["revision"] != revision
            if settled:
                return view
            if time.monotonic() > deadline:
                raise PlatformError(
                    f"endpoint {name!r} is still {view['status']} after {timeout_s:g} s"
                )
            time.sleep(0.25)  # polling the control plane

    def metrics(
        self,
        endpoint: str,
        *,
        since_s: int = 900,
        period_s: int | None = None,
        metric: str | None = None,
        variant: str | None = None,
    ) -> dict[str, Any]:
        """An endpoint's metrics over the last ``since_s`` seconds (up to 14 days), merged into
        periods of ``period_s`` seconds (a multiple of 10; by default about 90 periods):
        ``{endpoint, start, end, period_s, series: [{metric, kind, variant, replica, points}]}``,
        each point ``{at, avg, sum, min, max, sample_count, p50, p90, p99}`` (a statistic a
        metric lacks is None: a counter has only ``sum``) or ``{at}`` alone for a period without
        data. The last period is the one in progress. ``metric`` and ``variant`` keep one."""
        params: dict[str, Any] = {"since": since_s}
        optional = {"period": period_s, "metric": metric, "variant": variant}
        params.update({k: v for k, v in optional.items() if v is not None})
        return dict(self._call("GET", f"/api/v1/endpoints/{endpoint}/metrics", params=params))

    # alarms
    def list_alarms(self) -> list[dict[str, Any]]:
        """Every alarm with its state."""
        return list(self._call("GET", "/api/v1/alarms")["items"])

    def describe_alarm(self, name: str) -> dict[str, Any]:
        """An alarm: its spec, state, reason, secret, recent transitions and webhooks."""
        return dict(self._call("GET", f"/api/v1/alarms/{quote(name, safe='')}"))

    def alarm_history(
        self, name: str, *, limit: int = 100, before: float | None = None
    ) -> dict[str, Any]:
        """An alarm's transitions, newest first: ``{items, next}`` (pass ``next`` as ``before``
        for the page after)."""
        params: dict[str, Any] = {"limit": limit}
        if before is not None:
            params["before"] = before
        path = f"/api/v1/alarms/{quote(name, safe='')}/history"
        return dict(self._call("GET", path, params=params))

    def delete_alarm(self, name: str) -> None:
        self._call("DELETE", f"/api/v1/alarms/{quote(name, safe='')}")

    def logs(
        self, name: str, *, tail: int = 100, cursor: dict[str, int] | None = None
    ) -> dict[str, Any]:
        params: dict[str, Any] = {"tail": tail}
        if cursor is not None:
            params["cursor"] = json.dumps(cursor)
        return dict(self._call("GET", f"/api/v1/endpoints/{name}/logs", params=params))

    # transform jobs
    def run_transform(self, name: str, spec: TransformJobSpec | dict[str, Any]) -> dict[str, Any]:
        """Start transform job ``name`` (its model must exist); ``{"kind", "name", "action"}``
        with action ``created``, or ``unchanged`` when this very job was started before.

        URIs in ``spec`` are read by the server: give absolute paths or storage URIs. Follow it
        with :meth:`wait_transform`.
        """
        raw = spec if isinstance(spec, dict) else spec.model_dump(mode="json", by_alias=True)
        return dict(self._call("POST", "/api/v1/transform-jobs", json={"name": name, "spec": raw}))

    def list_transform_jobs(self) -> list[dict[str, Any]]:
        """Transform jobs, newest first: status, model and record counts."""
        return list(self._call("GET", "/api/v1/transform-jobs")["items"])

    def transform_job(self, name: str) -> dict[str, Any]:
        """One transform job: status, message, progress, summary, outputs, failure file."""
        return dict(self._call("GET", f"/api/v1/transform-jobs/{name}"))

    def stop_transform_job(self, name: str) -> dict[str, Any]:
        """Ask a running job to stop (it ends as Stopped); ``{"name", "status"}``. A job that
        already ended otherwise is a :class:`~modelyard.errors.ConflictError`."""
        return dict(self._call("POST", f"/api/v1/transform-jobs/{name}/stop"))

    def transform_logs(self, name: str, *, tail: int = 100) -> list[str]:
        """The last ``tail`` lines of the job's log and of each of its replicas' logs."""
        page = self._call("GET", f"/api/v1/transform-jobs/{name}/logs", params={"tail": tail})
        return list(page["lines"])

    def wait_transform(
        self,
        name: str,
        *,
        timeout_s: float | None = None,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Poll until the job has ended (Stopped, Completed, CompletedWithFailures or Failed),
        calling ``on_progress`` with each description; returns the last one. With no
        ``timeout_s`` it waits as long as the job runs; through a control-plane restart too
        (up to a minute unreachable)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        patient = Patient()  # the job resumes after a control-plane restart: so does the wait
        while True:
            view = patient.call(lambda: self.transform_job(name))
            if on_progress:
                on_progress(view)
            if view["status"] in TRANSFORM_FINAL:
                return view
            if deadline is not None and time.monotonic() > deadline:
                raise PlatformError(
                    f"transform job {name!r} is still {view['status']} after {timeout_s:g} s"
                )
            time.sleep(0.25)  # polling the control plane

    # data plane
    def invoke(
        self,
        endpoint: str,
        body: bytes | str | Any,
        *,
        content_type: str = "application/json",
        accept: str | None = None,
        variant: str | None = None,
        custom_attributes: str | None = None,
    ) -> InvokeResult:
        """Invoke an endpoint through the gateway (SageMaker Runtime's InvokeEndpoint)."""
        if not self.gateway_url:
            raise UserError("no gateway URL known: pass gateway_url or set MODELYARD_GATEWAY_URL")
        if isinstance(body, str):
            data = body.encode()
        elif isinstance(body, bytes):
            data = body
        else:
            data = json.dumps(body).encode()
        headers = {"Content-Type": content_type}
        if accept:
            headers["Accept"] = accept
        if variant:
            headers["X-Amzn-SageMaker-Target-Variant"] = variant
        if custom_attributes:
            headers["X-Amzn-SageMaker-Custom-Attributes"] = custom_attributes
        if self.invoke_token:
            headers["Authorization"] = f"Bearer {self.invoke_token}"
        url = f"{self.gateway_url}/endpoints/{endpoint}/invocations"
        try:
            resp = httpx.post(
                url, content=data, headers=headers, timeout=self._http.timeout, trust_env=False
            )
        except httpx.HTTPError as exc:
            raise PlatformError(f"cannot reach the gateway at {self.gateway_url}: {exc}") from exc
        if resp.status_code >= 300:
            raise _invoke_error(resp)
        return InvokeResult(
            body=resp.content,
            content_type=resp.headers.get("content-type", ""),
            variant=resp.headers.get("x-amzn-invoked-production-variant", ""),
            custom_attributes=resp.headers.get("x-amzn-sagemaker-custom-attributes"),
        )

    def invoke_async(
        self,
        endpoint: str,
        body: bytes | str | Path | BinaryIO | None = None,
        *,
        input_location: str | None = None,
        content_type: str = "application/json",
        accept: str | None = None,
        custom_attributes: str | None = None,
        inference_id: str | None = None,
        request_ttl_s: int | None = None,
        invocation_timeout_s: int | None = None,
    ) -> dict[str, str]:
        """Queue a request on an async endpoint (SageMaker Runtime's InvokeEndpointAsync).

        The payload is ``body`` (a path or an open binary file is streamed, never read whole),
        or what is stored at ``input_location`` (a storage URI the server can read); with both,
        ``body`` is stored there first. Returns ``{"inference_id", "output_location",
        "failure_location"}``; follow it with :meth:`async_invocation` or :meth:`wait_async`.
        """
        if not self.gateway_url:
            raise UserError("no gateway URL known: pass gateway_url or set MODELYARD_GATEWAY_URL")
        if body is None and input_location is None:
            raise UserError("give a body, an input_location, or both")
        headers = {"X-Amzn-SageMaker-Content-Type": content_type}
        optional = {
            "X-Amzn-SageMaker-Accept": accept,
            "X-Amzn-SageMaker-Custom-Attributes": custom_attributes,
            "X-Amzn-SageMaker-Inference-Id": inference_id,
            "X-Amzn-SageMaker-InputLocation": input_location,
            "X-Amzn-SageMaker-RequestTTLSeconds": request_ttl_s,
            "X-Amzn-SageMaker-InvocationTimeoutSeconds": invocation_timeout_s,
        }
        headers.update({k: str(v) for k, v in optional.items() if v is not None})
        if self.invoke_token:
            headers["Authorization"] = f"Bearer {self.invoke_token}"
        url = f"{self.gateway_url}/endpoints/{endpoint}/async-invocations"
        with contextlib.ExitStack() as stack:
            content: Any
            if isinstance(body, Path):
                headers["Content-Length"] = str(body.stat().st_size)
                content = _chunks(stack.enter_context(open(body, "rb")))
            elif isinstance(body, str):
                content = body.encode()
            elif isinstance(body, bytes) or body is None:
                content = body or b""
            else:
                content = _chunks(body)
            try:
                resp = httpx.post(
                    url,
                    content=content,
                    headers=headers,
                    timeout=httpx.Timeout(self._http.timeout.read, write=None),
                    trust_env=False,
                )
            except httpx.HTTPError as exc:
                raise PlatformError(
                    f"cannot reach the gateway at {self.gateway_url}: {exc}"
                ) from exc
        if resp.status_code >= 300:
            raise _invoke_error(resp)
        data = resp.json()
        return {
            "inference_id": data["InferenceId"],
            "output_location": resp.headers.get("x-amzn-sagemaker-outputlocation", ""),
            "failure_location": resp.headers.get("x-amzn-sagemaker-failurelocation", ""),
        }

    def async_invocation(self, endpoint: str, inference_id: str) -> dict[str, Any]:
        """One async request: status (Queued, Running, Completed, Failed), locations, reason."""
        return dict(
            self._call("GET", f"/api/v1/endpoints/{endpoint}/async-invocations/{inference_id}")
        )

    def list_async_invocations(
        self, endpoint: str, *, status: str | None = None, limit: int = 50
    ) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"limit": limit}
        if status:
            params["status"] = status
        page = self._call("GET", f"/api/v1/endpoints/{endpoint}/async-invocations", params=params)
        return list(page["items"])

    def wait_async(
        self, endpoint: str, inference_id: str, *, timeout_s: float = 3600
    ) -> dict[str, Any]:
        """Poll until the request is Completed or Failed; returns its status."""
        deadline = time.monotonic() + timeout_s
        while True:
            view = self.async_invocation(endpoint, inference_id)
            if view["status"] in ("Completed", "Failed"):
                return view
            if time.monotonic() > deadline:
                raise PlatformError(
                    f"async request {inference_id} is still {view['status']} after {timeout_s:g} s"
                )
            time.sleep(0.2)  # polling the control plane


def read_documents(path: str | Path) -> list[Document]:
    """The documents of a YAML file, checked, with relative paths made relative to the file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}") from exc
    return load_documents(text, base_dir=path.parent.resolve(), source=str(path))


def _chunks(fh: BinaryIO, size: int = 1024 * 1024) -> Iterator[bytes]:
    while chunk := fh.read(size):
        yield chunk


def _invoke_error(resp: httpx.Response) -> ModelyardError:
    from modelyard import errors

    try:
        message = resp.json().get("message", resp.text)
    except ValueError:
        message = resp.text
    kind = resp.headers.get("x-amzn-errortype", "")
    by_status: dict[int, type[ModelyardError]] = {
        400: errors.InvalidInputError,
        401: errors.AuthError,
        404: errors.NotFoundError,
        413: errors.PayloadTooLargeError,
        424: errors.ModelInvocationError,
        429: errors.ThrottledError,
        503: errors.CapacityError,
        504: errors.InvocationTimeoutError,
    }
    cls = by_status.get(resp.status_code, PlatformError)
    return cls(f"{kind}: {message}" if kind else str(message))
