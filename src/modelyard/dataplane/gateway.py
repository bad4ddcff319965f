"""The gateway: SageMaker Runtime's InvokeEndpoint over the routing table.

This is the hot path: no framework, no per-request validation or info-level logging, one copy of
the body. It is a request handler for the data plane's own HTTP server
(:mod:`modelyard.dataplane.http`), which reads bodies up to the payload limit, and it reaches
replicas over pooled keep-alive connections (:mod:`modelyard.dataplane.upstream`). It keeps
serving from its last routing table (also saved to disk) while the control plane is away.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import aiohttp

from modelyard import inbox, storage
from modelyard.dataplane import bundle
from modelyard.dataplane import gateway_metrics as gm
from modelyard.dataplane import sagemaker as sm
from modelyard.dataplane.async_entry import async_entry
from modelyard.dataplane.http import Answer, BodyIncomplete, BodyTooLarge, Headers, Request
from modelyard.dataplane.routing import EndpointRoute, Upstream, VariantRoute, build_routes
from modelyard.dataplane.sagemaker import GatewayError
from modelyard.dataplane.sagemaker import fail as _fail
from modelyard.dataplane.shadow import ShadowRoute
from modelyard.dataplane.shadow import copy as shadow_copy
from modelyard.dataplane.upstream import BundlesUnsupported, Pool, UpstreamError, Upstreams

log = logging.getLogger("modelyard.gateway")

_JSON = b"application/json"
_JSON_HEADERS = ((b"content-type", _JSON),)
_METRICS_HEADERS = ((b"content-type", gm.CONTENT_TYPE),)
#: Bodies larger than this go alone: bundling saves per-request overhead, which they dwarf.
_BUNDLE_MAX_BODY = 64 * 1024
_FORWARDED = (b"accept", sm.H_CUSTOM_ATTRIBUTES, sm.H_INFERENCE_ID)
#: While a request is held for a replica that is starting, the routing table is read this often.
_HOLD_SYNC_S = 0.02
#: The gateway writes an uploaded async payload in pieces of about this size.
_UPLOAD_CHUNK = 1024 * 1024


class Gateway:
    def __init__(
        self,
        *,
        control_url: str,
        token: str,
        invoke_token: str | None,
        routes_file: Path,
        max_payload_bytes: int,
        timeout_s: float,
        sync_interval_s: float,
        inbox_dir: Path | None = None,
        serverless_max_payload_bytes: int = 4 * 1024 * 1024,
        async_max_payload_bytes: int = 1024 * 1024 * 1024,
        workers: int = 1,
    ) -> None:
        self.control_url = control_url
        self.token = token
        self.invoke_token = invoke_token
        self.routes_file = routes_file
        self.max_payload = max_payload_bytes
        self.timeout_s = timeout_s
        self.sync_interval_s = sync_interval_s
        self._too_big = f"payload larger than the limit of {max_payload_bytes // (1024 * 1024)} MB"
        self.inbox_dir = inbox_dir or routes_file.parent / inbox.INBOX
        self.serverless_max_payload = serverless_max_payload_bytes
        self.async_max_payload = async_max_payload_bytes
        self.workers = workers
        self.routes: dict[str, EndpointRoute] = {}
        self.counts: gm.Counts = {}
        #: copies in flight to shadow variants
        self._copies: set[asyncio.Task[None]] = set()
        #: counts the control plane did not get (it was away): sent with the next sync
        #: counts not yet acknowledged by the control plane
        self.batches = gm.CountBatches()
        #: what ``GET /metrics`` answers (shared through files by several workers)
        self.totals = gm.GatewayTotals(routes_file.parent / gm.FOLDER if workers > 1 else None)
        #: requests in progress per endpoint (sampled at each sync: concurrent_requests)
        self.busy: dict[str, int] = {}
        #: requests in progress (held ones included) per serverless or async endpoint
        self.inflight: dict[str, int] = {}
        self._holding = 0
        self._kick = asyncio.Event()
        self._sync_cond = asyncio.Condition()
        self._syncs_started = 0
        self._syncs_done = 0
        self._session: aiohttp.ClientSession | None = None  # for the control plane
        self.upstreams = Upstreams()  # for the replicas
        self._sync_task: asyncio.Task[None] | None = None

    # lifecycle -------------------------------------------------------------------------
    async def startup(self) -> None:
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=60, ttl_dns_cache=None)
        self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False)
        self._load_saved_routes()
        self._sync_task = asyncio.create_task(self._sync_forever())

    async def shutdown(self) -> None:
        if self._sync_task:
            self._sync_task.cancel()
        if self._session:
            await self._session.close()
        self.upstreams.close()
        self.totals.close()

    def _load_saved_routes(self) -> None:
        with contextlib.suppress(OSError, ValueError, KeyError):
            self.routes = build_routes(json.loads(self.routes_file.read_text()), {}, self.workers)

    async def _sync_forever(self) -> None:
        assert self._session is not None
        headers = {"Authorization": f"Bearer {self.token}"}
        url = f"{self.control_url}/internal/v1/gateway/sync"
        last_table: Any = None
        while True:
            self._syncs_started += 1
            number = self._syncs_started
            counts, self.counts = self.counts, {}
            self.totals.add(counts)  # once, whether or not the control plane gets them now
            self.batches.add(counts, time.time())
            batches = self.batches.pending()
            active = [name for name, n in self.inflight.items() if n > 0]
            busy = {name: n for name, n in self.busy.items() if name in self.routes}
            self.totals.save(busy)
            try:
                async with self._session.post(
                    url,
                    json={
                        "batches": batches,
                        "active": active,
                        "busy": busy,
                        "worker": os.getpid(),
                    },
                    headers=headers,
                    timeout=aiohttp.ClientTimeout(5),
                ) as resp:
                    if resp.status != 200:
                        raise aiohttp.ClientError(f"sync answered {resp.status}")
                    table = (await resp.json())["routes"]
                self.batches.acknowledged(len(batches))
                if table != last_table:
                    self.routes = build_routes(table, self.routes, self.workers)
                    self.upstreams.retain(
                        {
                            up.address
                            for route in self.routes.values()
                            for fleet in (route, route.canary)
                            if fleet is not None
                            for variant in fleet.variants.values()
                            for up in variant.replicas
                        }
                    )
                    self._save_routes(table)
                    last_table = table
            except (TimeoutError, aiohttp.ClientError, ValueError, KeyError) as exc:
                # The batches stay, numbered, for the next try: one the control plane did apply
                # (its answer lost) is not applied twice.
                log.debug("control plane unreachable, serving the last routing table: %s", exc)
            async with self._sync_cond:
                self._syncs_done = number
                self._sync_cond.notify_all()
            interval = _HOLD_SYNC_S if self._holding else self.sync_interval_s
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), interval)
            self._kick.clear()

    async def _fresh_route(self, name: str, wait_s: float = 2.0) -> EndpointRoute | None:
        """Look an endpoint up again after a sync that starts now (waiting up to ``wait_s``), so
        a request sent right after `apply --wait` returned (or a replica came back) does not
        miss a table a moment old."""
        target = self._syncs_started + 1
        self._kick.set()
        async with self._sync_cond:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._sync_cond.wait_for(lambda: self._syncs_done >= target),
                    max(0.0, min(2.0, wait_s)),
                )
        return self.routes.get(name)

    def _save_routes(self, table: Any) -> None:
        tmp = self.routes_file.with_suffix(f".{os.getpid()}.tmp")  # workers write it too
        try:
            tmp.write_text(json.dumps(table))
            os.replace(tmp, self.routes_file)
        except OSError as exc:
            log.warning("could not save the routing table: %s", exc)

    # requests --------------------------------------------------------------------------
    async def __call__(self, request: Request) -> Answer:
        path = request.path
        if path.startswith("/endpoints/"):
            if path.endswith("/invocations"):
                if request.method != "POST":
                    return _error(405, sm.VALIDATION, "use POST")
                return await self._invoke(path[len("/endpoints/") : -len("/invocations")], request)
            if path.endswith("/async-invocations"):
                if request.method != "POST":
                    return _error(405, sm.VALIDATION, "use POST")
                name = path[len("/endpoints/") : -len("/async-invocations")]
                return await self._invoke_async(name, request)
        if path in ("/ping", "/healthz"):
            return 200, _JSON_HEADERS, b'{"status":"ok"}'
        if path == "/metrics":
            return self._metrics(request)
        return _error(404, sm.VALIDATION, f"no route for {path}")

    def streaming(self, method: str, path: str, headers: dict[bytes, bytes]) -> int | None:
        """The HTTP server asks this for each request: async invocations stream their body
        (to storage), up to the async payload limit; every other body is read whole."""
        if method == "POST" and path.endswith("/async-invocations"):
            return self.async_max_payload
        return None

    def error(self, status: int, message: str) -> Answer:
        """The HTTP server's own answers (malformed request, head or body too large, a defect
        here), SageMaker-style."""
        if status == 413:
            message = self._too_big
        return _error(status, sm.VALIDATION if status < 500 else sm.INTERNAL_FAILURE, message)

    def _metrics(self, request: Request) -> Answer:
        """Prometheus' scrape (gateway_metrics.py); it needs the invoke token when invocations
        do."""
        if request.method != "GET":
            return _error(405, sm.VALIDATION, "use GET")
        try:
            if self.invoke_token is not None:
                self._authorize(request.headers)
        except GatewayError as exc:
            return exc.status, _error_headers(exc.error_type), exc.body
        busy = {name: self.busy.get(name, 0) for name in self.routes}
        return 200, _METRICS_HEADERS, self.totals.scrape(busy)

    async def _invoke(self, name: str, request: Request) -> Answer:
        started = time.perf_counter()
        self.busy[name] = self.busy.get(name, 0) + 1
        try:
            return await self._invoke_sync(name, request, started)
        finally:
            left = self.busy[name] - 1
            if left:
                self.busy[name] = left
            else:  # no entry kept per name ever asked for (404s included)
                del self.busy[name]

    async def _invoke_sync(self, name: str, request: Request, started: float) -> Answer:
        headers = request.headers
        variant_name = ""
        try:
            if self.invoke_token is not None:
                self._authorize(headers)
            route = self.routes.get(name) or await self._fresh_route(name)
            if route is None:
                raise _fail(404, sm.VALIDATION, f"Endpoint {name} not found.")
            body = request.body
            if route.kind == "serverless":
                return await self._invoke_serverless(route, request, started)
            if route.kind == "async":
                raise _fail(
                    400,
                    sm.VALIDATION,
                    f"Endpoint {name} is asynchronous: send requests to "
                    f"/endpoints/{name}/async-invocations",
                )
            variant = self._variant(route, headers)
            variant_name = variant.name
            forwarded = await self._forward(variant, headers, body)
            if forwarded is None:  # no replica reached: the table may be a moment old, look again
                fresh = await self._fresh_route(name)
                if fresh is not None:  # (a variant of a revision no longer routed: another)
                    variant = (
                        fresh.find_variant(variant_name, fresh.fleet())
                        or (None if sm.H_TARGET_VARIANT in headers else fresh.choose_variant())
                        or variant
                    )
                    variant_name = variant.name
                forwarded = await self._forward(variant, headers, body)
            if forwarded is None:
                raise _fail(
                    503,
                    sm.SERVICE_UNAVAILABLE,
                    f"variant {variant_name} has no ready replica; try again shortly",
                )
        except GatewayError as exc:
            if name in self.routes:
                gm.count(self.counts, name, variant_name or "-", exc.status, started, exc.model_ms)
            return exc.status, _error_headers(exc.error_type), exc.body
        answer, model_ms = forwarded
        gm.count(self.counts, name, variant_name, answer[0], started, model_ms)
        if route.shadow is not None and answer[0] < 300:
            self._copy_to_shadow(route, route.shadow, headers, body, answer[2])
        return answer

    def _copy_to_shadow(
        self, route: EndpointRoute, shadow: ShadowRoute, headers: Any, body: bytes, out: bytes
    ) -> None:
        """A copy of a sampled request for the shadow variant, sent from a task of its own once
        production has answered (dataplane/shadow.py)."""
        variant = route.variants.get(shadow.variant)
        if variant is None or not shadow.sampled():
            return
        name = route.name
        if not shadow.has_room():
            gm.shadow_copy(self.counts, name, variant.name, None)
            return
        shadow.in_flight += 1
        task = asyncio.create_task(
            shadow_copy(
                shadow,
                variant,
                self._forward,
                lambda v, status, at, ms: gm.count(self.counts, name, v, status, at, ms),
                lambda v, agreed: gm.shadow_copy(self.counts, name, v, agreed),
                headers,
                body,
                out,
                time.perf_counter(),
            )
        )
        self._copies.add(task)
        task.add_done_callback(self._copies.discard)

    async def _invoke_serverless(
        self, route: EndpointRoute, request: Request, started: float
    ) -> Answer:
        """A serverless endpoint: the payload limit, the concurrency cap (429 over it), and a
        request at zero held while a replica starts (counted and timed as a cold start)."""
        name, headers, body = route.name, request.headers, request.body
        variant_name = "-"
        inflight = self.inflight.get(name, 0)
        try:
            if len(body) > self.serverless_max_payload:
                limit = self.serverless_max_payload // (1024 * 1024)
                raise _fail(
                    413, sm.VALIDATION, f"payload larger than a serverless endpoint's {limit} MB"
                )
            if route.max_concurrency is not None and inflight >= route.max_concurrency:
                raise _fail(
                    429,
                    sm.THROTTLING,
                    f"Endpoint {name} is at its max_concurrency "
                    f"({route.max_concurrency} invocations in progress); retry with backoff",
                )
            self.inflight[name] = inflight + 1
            deadline = time.monotonic() + self.timeout_s  # holding and answering, together
            try:
                variant = self._variant(route, headers)
                variant_name = variant.name
                if not variant.replicas:
                    variant = await self._hold(request, name, variant_name, deadline)
                forwarded = await self._forward(variant, headers, body, _left(deadline))
                if forwarded is None:  # the replica went while we chose it: hold for another
                    variant = await self._hold(request, name, variant_name, deadline)
                    forwarded = await self._forward(variant, headers, body, _left(deadline))
                if forwarded is None:
                    raise _fail(
                        503,
                        sm.SERVICE_UNAVAILABLE,
                        f"variant {variant_name} has no ready replica; try again shortly",
                    )
            finally:
                self.inflight[name] -= 1
        except GatewayError as exc:
            gm.count(self.counts, name, variant_name, exc.status, started, exc.model_ms)
            return exc.status, _error_headers(exc.error_type), exc.body
        answer, model_ms = forwarded  # the hold for a replica is overhead, not the model's
        gm.count(self.counts, name, variant_name, answer[0], started, model_ms)
        return answer

    async def _hold(
        self, request: Request, name: str, variant_name: str, deadline: float
    ) -> VariantRoute:
        """Wait, until ``deadline`` (the invocation timeout), for the variant to have a ready
        replica (the sync reports this endpoint active, which makes the control plane start
        one). A request whose client went away stops waiting (and counting toward the cap)."""
        started = time.monotonic()
        self._holding += 1
        try:
            while True:
                route = await self._fresh_route(name, _left(deadline))
                variant = route.variants.get(variant_name) if route else None
                if request.client_gone:
                    raise _fail(499, sm.VALIDATION, "the client closed the connection")
                if variant is not None and variant.replicas:
                    slot = gm.slot(self.counts, name, variant_name)
                    slot[3] += 1
                    slot[4] += (time.monotonic() - started) * 1000.0
                    return variant
                if route is None:
                    raise _fail(404, sm.VALIDATION, f"Endpoint {name} not found.")
                if variant is None:
                    raise _fail(
                        503, sm.SERVICE_UNAVAILABLE, f"variant {variant_name} is gone; retry"
                    )
                if time.monotonic() >= deadline:
                    raise _fail(
                        503,
                        sm.SERVICE_UNAVAILABLE,
                        f"no replica of variant {variant_name} became ready within "
                        f"{self.timeout_s:g} s (see `modelyard describe {name}`)",
                    )
                await asyncio.sleep(_HOLD_SYNC_S)
        finally:
            self._holding -= 1

    async def _invoke_async(self, name: str, request: Request) -> Answer:
        """InvokeEndpointAsync: store the payload (streamed from the request body, or named by
        X-Amzn-SageMaker-InputLocation), put the request in the inbox, answer 202."""
        headers = request.headers
        try:
            if self.invoke_token is not None:
                self._authorize(headers)
            route = self.routes.get(name) or await self._fresh_route(name)
            if route is None:
                raise _fail(404, sm.VALIDATION, f"Endpoint {name} not found.")
            if route.kind != "async" or route.locations is None:
                raise _fail(
                    400,
                    sm.VALIDATION,
                    f"Endpoint {name} is not asynchronous (type {route.kind}); send requests to "
                    f"/endpoints/{name}/invocations",
                )
            entry = async_entry(route, headers)
            self.inflight[name] = self.inflight.get(name, 0) + 1
            try:
                await self._receive_input(request, entry, route.locations)
            finally:
                self.inflight[name] -= 1
        except GatewayError as exc:
            if name in self.routes:
                gm.count(self.counts, name, "-", exc.status)
            return exc.status, _error_headers(exc.error_type), exc.body
        variant = next(iter(route.variants))
        gm.count(self.counts, name, variant, 202)
        output = storage.join(route.locations["output"], f"{entry['id']}.out")
        failure = storage.join(route.locations["failure"], f"{entry['id']}.error")
        out = [
            *_JSON_HEADERS,
            (sm.H_OUTPUT_LOCATION, output.encode()),
            (sm.H_FAILURE_LOCATION, failure.encode()),
        ]
        body = json.dumps(
            {"InferenceId": entry["id"], "OutputLocation": output, "FailureLocation": failure}
        )
        return 202, out, body.encode()

    async def _receive_input(
        self, request: Request, entry: dict[str, Any], locations: dict[str, str]
    ) -> None:
        """Stream the body (if any) to storage, then put the entry in the inbox: only then is
        the request accepted."""
        loop = asyncio.get_running_loop()
        stream = request.stream
        first = await _read(stream) if stream is not None else b""
        if not first and not entry["input_uri"]:
            raise _fail(
                400,
                sm.VALIDATION,
                "send the payload as the request body, or name where it is with "
                "X-Amzn-SageMaker-InputLocation",
            )
        if first:
            assert stream is not None
            target = entry["input_uri"] or storage.join(locations["input"], entry["id"])
            entry.update(input_uri=target, input_owned=not entry["input_uri"])
            writer = storage.atomic_write(target)
            try:
                sink = await loop.run_in_executor(None, writer.__enter__)
            except (OSError, ValueError) as exc:
                raise _fail(
                    400, sm.VALIDATION, f"cannot write the input to {target}: {exc}"
                ) from exc
            size = 0
            try:
                pending = [first]
                buffered = len(first)
                while True:
                    chunk = await _read(stream)
                    if chunk:
                        pending.append(chunk)
                        buffered += len(chunk)
                    if buffered >= _UPLOAD_CHUNK or (not chunk and pending):
                        data = b"".join(pending)
                        pending, buffered = [], 0
                        await loop.run_in_executor(None, sink.write, data)
                        size += len(data)
                    if not chunk:
                        break
            except BaseException as exc:
                await loop.run_in_executor(None, writer.__exit__, type(exc), exc, None)
                raise
            await loop.run_in_executor(None, writer.__exit__, None, None, None)
            entry["input_bytes"] = size
        entry["received_at"] = time.time()
        try:
            await loop.run_in_executor(None, inbox.put, self.inbox_dir, entry)
        except OSError as exc:
            if entry.get("input_owned"):  # not accepted: its stored input goes too
                with contextlib.suppress(OSError):
                    await loop.run_in_executor(None, storage.remove, entry["input_uri"])
            raise _fail(500, sm.INTERNAL_FAILURE, f"could not queue the request: {exc}") from exc

    def _authorize(self, headers: dict[bytes, bytes]) -> None:
        value = headers.get(b"authorization", b"").decode("latin-1")
        token = ""
        if value.lower().startswith("bearer "):
            token = value[7:].strip()
        elif value.startswith("AWS4-HMAC-SHA256") and "Credential=" in value:
            # boto3 users put the invoke token in aws_access_key_id.
            token = value.split("Credential=", 1)[1].split("/", 1)[0]
        assert self.invoke_token is not None
        if not token or not hmac.compare_digest(token, self.invoke_token):
            raise _fail(401, "UnrecognizedClientException", "missing or wrong invoke token")

    def _variant(self, route: EndpointRoute, headers: dict[bytes, bytes]) -> VariantRoute:
        wanted = headers.get(sm.H_TARGET_VARIANT)
        if wanted is not None:
            variant = route.find_variant(wanted.decode("latin-1"), route.fleet())
            if variant is None:
                known = ", ".join(route.variants)
                raise _fail(
                    400,
                    sm.VALIDATION,
                    f"Variant {wanted.decode('latin-1')} not found for endpoint {route.name} "
                    f"(variants: {known}).",
                )
            return variant
        chosen = route.choose_variant()
        if chosen is None:
            raise _fail(
                503, sm.SERVICE_UNAVAILABLE, f"endpoint {route.name} has no weighted variant"
            )
        return chosen

    async def _forward(
        self,
        variant: VariantRoute,
        headers: dict[bytes, bytes],
        body: bytes,
        timeout_s: float | None = None,
    ) -> tuple[Answer, float] | None:
        """The replica's answer and how long it took (ms, from the request sent to the answer
        received, for the attempt that answered), or None when no replica could be reached."""
        timeout = self.timeout_s if timeout_s is None else timeout_s
        content_type = headers.get(b"content-type", _JSON)
        item = b""
        if variant.bundles and len(body) <= _BUNDLE_MAX_BODY:
            accept = headers.get(b"accept", b"")
            attrs = headers.get(sm.H_CUSTOM_ATTRIBUTES, b"")
            if max(len(content_type), len(accept), len(attrs)) <= bundle.MAX_FIELD:
                item = bundle.encode_item(content_type, accept, attrs, body)
        tried: Upstream | None = None
        for _attempt in range(2):
            upstream = variant.choose(exclude=tried)
            if upstream is None:
                return None
            upstream.outstanding += 1
            sent = time.perf_counter()
            try:
                pool = self.upstreams.pool(upstream.address)
                answer = None
                if item and pool.takes_bundles:
                    with contextlib.suppress(BundlesUnsupported):  # then as a plain request
                        answer = await pool.invoke(item, timeout)
                if answer is None:
                    answer = await self._post(pool, content_type, headers, body, timeout)
            except UpstreamError:
                tried = upstream  # the replica is gone or going: one more try elsewhere
                continue
            except TimeoutError as exc:
                raise GatewayError(
                    504,
                    sm.MODEL_ERROR,
                    sm.error_body(f"the model did not answer within {self.timeout_s:g} s"),
                    (time.perf_counter() - sent) * 1000.0,
                ) from exc
            finally:
                upstream.outstanding -= 1
            model_ms = (time.perf_counter() - sent) * 1000.0
            if answer.status >= 300:
                raise GatewayError(
                    424,
                    sm.MODEL_ERROR,
                    sm.model_error_body(variant.name, answer.status, answer.body),
                    model_ms,
                )
            out = [
                (b"content-type", answer.content_type or _JSON),
                (sm.H_INVOKED_VARIANT, variant.name_bytes),
            ]
            if answer.attrs:
                out.append((sm.H_CUSTOM_ATTRIBUTES, answer.attrs))
            return (answer.status, out, answer.body), model_ms
        return None

    async def _post(
        self,
        pool: Pool,
        content_type: bytes,
        headers: dict[bytes, bytes],
        body: bytes,
        timeout_s: float,
    ) -> bundle.ItemAnswer:
        """One plain ``POST /invocations``, its answer in the shape a bundle's would have."""
        lines = [b"Content-Type: ", content_type, b"\r\n"]
        for key in _FORWARDED:
            value = headers.get(key)
            if value is not None:
                lines += (key, b": ", value, b"\r\n")
        resp = await pool.post(b"".join(lines), body, timeout_s)
        return bundle.ItemAnswer(
            resp.status,
            resp.header(b"content-type") or b"",
            resp.header(sm.H_CUSTOM_ATTRIBUTES) or b"",
            resp.body,
        )


def _left(deadline: float) -> float:
    """Seconds until ``deadline`` (at least a moment, so a last try can still be made)."""
    return max(0.01, deadline - time.monotonic())


async def _read(stream: Any) -> bytes:
    """The next piece of a streamed body; the body's own troubles as the gateway's errors."""
    try:
        chunk: bytes = await stream.read()
    except BodyTooLarge as exc:
        raise _fail(413, sm.VALIDATION, "payload larger than the async payload limit") from exc
    except BodyIncomplete as exc:
        raise _fail(400, sm.VALIDATION, "the request body ended early") from exc
    return chunk


def _text(value: bytes | None) -> str:
    return value.decode("latin-1") if value else ""


def _error_headers(error_type: str) -> Headers:
    return [*_JSON_HEADERS, (sm.H_ERROR_TYPE, error_type.encode())]


def _error(status: int, error_type: str, message: str) -> Answer:
    return status, _error_headers(error_type), sm.error_body(message)
