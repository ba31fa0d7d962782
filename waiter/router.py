"""The router's request-side state: which requests are its own (the admin API, which it serves through the aiohttp
app), which service a proxied one goes to (resolution, maintenance, fallback), and its shared-state view."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from aiohttp import web

from waiter import cors
from waiter import interstitial as splash
from waiter.api import admin, control
from waiter.api.common import CID
from waiter.async_requests import AsyncHolds
from waiter.auth import PUBLIC, Access, Admission, AuthRequest, Caller, Gate, Permissions
from waiter.auth.gate import header_lines
from waiter.auth.stamp import CALLER_HEADER, SECRET_HEADER, Stamp, read_caller
from waiter.autoscaler import Autoscaler
from waiter.coordinator import ASYNC_COMPLETED, Coordinator
from waiter.debug import DebugInfo, add_to_error, wants_debug
from waiter.descriptor import RequestOptions
from waiter.errors import WaiterError, internal_error, render_error
from waiter.forwarding import new_cid
from waiter.lifecycle import in_fallback
from waiter.registry import ServiceRegistry
from waiter.resolver import SERVICE_ID_TOKEN, Resolver, cacheable
from waiter.service import ResolvedService, Service
from waiter.settings import Settings
from waiter.state import StateUnavailable
from waiter.text import printable
from waiter.tokens import HISTORY_LIMIT, TokenRegistry
from waiter.upstream import UpstreamPool

if TYPE_CHECKING:
    from waiter.api.metrics import Peers
    from waiter.api.routes import RouteTable
    from waiter.frontdoor import ClientTraffic
    from waiter.handoff import Handoff

log = logging.getLogger(__name__)

_LOCAL_HOSTS = frozenset({"", "localhost", "127.0.0.1", "[::1]", "::1"})
_ALLOWED_LIMIT = 10_000  # entries of Router.resolve_for's cache
AllowedKey = tuple[tuple[tuple[str, str], ...], str | None, str | None]  # x-waiter-* headers, Host, user


def _action(method: str, path: str) -> str:
    """What a service-owner request does to its service, for the 403's sentence: "delete", "suspend", ..."""
    parts = [p for p in path.split("/") if p]
    if len(parts) <= 2:
        return "delete" if method == "DELETE" else method.lower()
    if len(parts) >= 5 and parts[2] == "instance":
        return f"{parts[4]} instance {parts[3]} of"
    return parts[-1]


class Router:
    def __init__(
        self,
        settings: Settings,
        tokens: TokenRegistry,
        registry: ServiceRegistry,
        pool: UpstreamPool,
        coordinator: Coordinator,
        autoscaler: Autoscaler,
        gate: Gate,
        routes: RouteTable,
        *,
        client_traffic: ClientTraffic,
        metrics_peers: Peers | None = None,
        handoff: Handoff | None = None,
    ) -> None:
        self.settings = settings
        self.tokens = tokens
        self.registry = registry
        self.pool = pool  # keep-alive connections to instances, for every request the router forwards
        self.coordinator = coordinator
        self.autoscaler = autoscaler
        self.resolver = Resolver(settings, tokens, self._core_of)
        self.gate = gate  # who calls (waiter.auth): admit() asks it for every request that is not public
        self.routes = routes  # the admin API's endpoints and their policies (waiter.api.routes)
        self.permissions = Permissions.of(settings)
        self.stamp = Stamp()  # marks requests the front door relays to the app (see waiter.auth.stamp)
        self._trusted_proxies = tuple(ipaddress.ip_network(c, strict=False) for c in settings.trusted_proxies)
        self.draining = False
        self.async_holds = AsyncHolds()  # slots kept for async requests in progress (waiter.async_requests)
        self.client_traffic = client_traffic  # what the front door counts (/metrics)
        self.metrics_peers = metrics_peers  # the supervisor, when this router is one of --workers
        self.handoff = handoff  # the routers of this machine, which take requests for the slots they hold
        self._own_hosts = _LOCAL_HOSTS | set(settings.hostnames) | {settings.host}
        # resolve_for's answers that passed the permission checks, until the tokens change
        self._allowed: dict[AllowedKey, tuple[ResolvedService, RequestOptions]] = {}
        self._allowed_generation = tokens.generation

    def _core_of(self, service_id: str) -> dict[str, Any] | None:
        service = self.registry.get(service_id)
        if service is not None:
            return dict(service.resolved.core)
        record = self.registry.inactive.get(service_id)
        return dict(record["service"]["core"]) if record else None

    async def complete_async(self, request_id: str, owner: str) -> None:
        """``/waiter-async/complete``: free the request's slot here, or tell its owner through the shared state."""
        if owner == self.settings.router_id:
            self.async_holds.complete(request_id)
        elif self.coordinator is not None and self.coordinator.state.shared:
            with contextlib.suppress(StateUnavailable):
                await self.coordinator.state.set_control(ASYNC_COMPLETED, request_id, {"by": self.settings.router_id})

    async def async_completed_elsewhere(self, request_id: str) -> bool:
        """Whether another router was told this router's async request is complete (then the mark is cleared)."""
        if self.coordinator is None or not self.coordinator.state.shared:
            return False
        state = self.coordinator.state
        try:
            if request_id not in await state.controls(ASYNC_COMPLETED):
                return False
            await state.set_control(ASYNC_COMPLETED, request_id, None)
        except StateUnavailable:
            return False
        return True

    async def inactive_service(self, service_id: str) -> dict[str, Any] | None:
        """The record of a deleted service (Registry.inactive_record), from any router that deleted it."""
        if self.coordinator is not None:
            with contextlib.suppress(StateUnavailable):
                return await self.coordinator.inactive(service_id)
        return self.registry.inactive.get(service_id)

    async def _load_pseudo_tokens(self, headers: tuple[tuple[str, str], ...]) -> None:
        """Make the services named by ^SERVICE-ID#<id> tokens known here, even those deleted through another router
        (the resolver itself never waits on the shared state)."""
        for name, value in headers:
            if name != "x-waiter-token" or SERVICE_ID_TOKEN not in value:
                continue
            for token in value.split(","):
                sid = token.strip().removeprefix(SERVICE_ID_TOKEN)
                if token.strip().startswith(SERVICE_ID_TOKEN) and self.registry.get(sid) is None:
                    await self.inactive_service(sid)

    def is_api(self, path: str, host: str, headers: tuple[tuple[str, str], ...]) -> bool:
        """docs/api.md §0.2: own paths, or the router's own host with no service-addressing x-waiter-* header.

        ``headers`` are the request's x-waiter-* headers (lowercase names); ``host`` its Host header or ""."""
        if path in admin.ALWAYS_API or path.startswith(admin.API_PREFIXES):
            return True
        for name, _ in headers:  # a loop, not any(): see waiter.resolver.names_token
            if name != "x-waiter-debug":
                return False
        host = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        return host.lower() in self._own_hosts or self.resolver.host_token(host) is None

    def shared_state_status(self) -> dict[str, Any]:
        """How this router shares counts and leases, and whether that works right now (for /status)."""
        coordinator, autoscaler = self.coordinator, self.autoscaler
        body: dict[str, Any] = {
            "kind": coordinator.state.kind,
            "available": coordinator.available,
            "leader?": autoscaler.is_leader,
            "routers": sorted(coordinator.view.routers),
        }
        if coordinator.last_error:
            body["message"] = coordinator.last_error
        where = coordinator.state.describe()
        if where:
            body["redis"] = where
        return body

    def serving(
        self,
        resolved: ResolvedService,
        options: RequestOptions,
        headers: tuple[tuple[str, str], ...],
        host: str | None,
        *,
        fallback: bool = True,
        user: str | None = None,
    ) -> Service:
        """The service that serves the request: the resolved version, started if needed, or during a token's
        fallback period, while that version has no healthy instance, the newest earlier version that has one
        (docs/api.md §3.5). The resolved version starts in the background either way."""
        service = self.registry.start(resolved)
        if not fallback or len(resolved.source_tokens) != 1 or service.tracker.any_healthy():
            return service
        name = resolved.source_tokens[0][0]
        record = self.tokens.get(name)
        if record is None:
            return service
        period = options.fallback_period_secs
        if period is None:
            period = resolved.description.fallback_period_secs
        updated = record.data.get("last-update-time")
        updated_at = updated / 1000 if isinstance(updated, int | float) else None
        if not in_fallback(updated_at, period, time.time()):
            return service
        previous = record.data.get("previous")
        for _ in range(HISTORY_LIMIT):
            if not isinstance(previous, Mapping):
                break
            try:
                older = self.resolver.resolve_version(headers, host, name, previous, user).service_id
            except WaiterError:
                older = None
            candidate = self.registry.get(older) if older else None
            if candidate is not None and candidate.tracker.healthy_count() > 0:
                return candidate
            previous = previous.get("previous")
        return service

    def current_for(self, service: Service) -> tuple[list[str], float | None]:
        """The tokens that reach this service now, and when the others last changed (None if none did)."""
        current: list[str] = []
        changed_at: float | None = None
        for name, _version in service.resolved.source_tokens:
            if self.resolver.token_service_id(name) == service.id:
                current.append(name)
                continue
            record = self.tokens.get(name)
            updated = record.data.get("last-update-time") if record is not None else None
            if isinstance(updated, int | float):
                changed_at = max(changed_at or 0.0, updated / 1000)
        return current, changed_at

    def interstitial(self, service: Service, accept: str, url: bytes) -> splash.Gate:
        """Whether a browser's request for ``url`` is shown the starting page first (waiter.interstitial)."""
        return splash.gate(
            url,
            html_wanted="text/html" in accept,
            by_token=service.interstitial_secs > 0,
            interstitial_secs=service.interstitial_secs,
            healthy=service.tracker.healthy_count() > 0,
            started_at=service.registered_at,
            now=time.time(),
        )

    def check_maintenance(self, resolved: ResolvedService) -> None:
        maintenance = resolved.token_meta.get("maintenance")
        if isinstance(maintenance, dict):
            raise WaiterError(
                503,
                str(maintenance.get("message", "The service is in maintenance.")),
                error_class="waiter.Maintenance",
                service_id=resolved.service_id,
            )

    def service_for(
        self, headers: tuple[tuple[str, str], ...], host: str | None, caller: Caller | None
    ) -> tuple[Service, RequestOptions]:
        """The service a proxied request goes to, started if needed. Raises WaiterError (400, 403, 404, 503)."""
        resolved, options = self.resolve_for(headers, host, caller)
        self.check_maintenance(resolved)
        service = self.serving(resolved, options, headers, host, user=caller.user if caller else None)
        if service.suspended:
            raise control.suspended_error(service)
        return service, options

    def resolve_for(
        self, headers: tuple[tuple[str, str], ...], host: str | None, caller: Caller | None
    ) -> tuple[ResolvedService, RequestOptions]:
        """The service ``caller`` addresses, if they may use it (403 otherwise). ``caller`` None: authentication
        is disabled for the token (it names every user field itself)."""
        user = caller.user if caller else None
        key = (headers, host, user)
        generation = self.tokens.generation
        if generation != self._allowed_generation or len(self._allowed) > _ALLOWED_LIMIT:
            self._allowed.clear()
            self._allowed_generation = generation
        hit = self._allowed.get(key)
        if hit is not None:
            return hit
        resolved, options = self.resolver.resolve(headers, host, user)
        if caller is not None:
            problem = self.use_problem(resolved, caller)
            if problem is not None:
                raise WaiterError(403, problem, error_class="waiter.ServiceForbidden", service_id=resolved.service_id)
        if cacheable(resolved):
            # What the caller may use depends on the tokens and the (fixed) permissions only.
            self._allowed[key] = (resolved, options)
        return resolved, options

    def use_problem(self, resolved: ResolvedService, caller: Caller) -> str | None:
        """Whether ``caller`` may run ``resolved``: they must be able to run as its run-as-user (unless one token
        that names run-as-user and permitted-user itself vouches: its owner was checked when it was written), and
        be its permitted-user."""
        core, user, perms = resolved.core, caller.user, self.permissions
        run_as = core.get("run-as-user")
        if not self._preauthorized(resolved) and not perms.is_admin(user):
            problem = perms.run_as_problem(user, run_as)
            if problem is not None:
                return problem
        return perms.permitted_problem(user, resolved.service_id, core.get("permitted-user"))

    def _preauthorized(self, resolved: ResolvedService) -> bool:
        if resolved.on_the_fly or len(resolved.source_tokens) != 1:
            return False
        record = self.tokens.get(resolved.source_tokens[0][0])
        if record is None:
            return False
        return record.data.get("run-as-user") not in (None, "*") and "permitted-user" in record.data

    def before_auth(self, headers: tuple[tuple[str, str], ...], host: str | None) -> ResolvedService | None:
        """What the request addresses as far as it can be known before authentication (its tokens), for the steps
        that come first: https-redirect, CORS preflight, tokens with authentication disabled. None if unknown."""
        try:
            return self.resolver.resolve(headers, host, None)[0]
        except WaiterError:
            return None

    def service_owner_problem(self, caller: Caller, service_id: str, what: str) -> str | None:
        service = self.registry.get(service_id)
        if service is None:
            if self.permissions.is_admin(caller.user):
                return None  # the handler answers (and clears what other routers may still keep of it)
            # Nobody can be shown to own it here, and acting on it would reach the other routers' copies.
            raise WaiterError(404, "Service not found", error_class="waiter.ServiceUnknown", service_id=service_id)
        owners = []
        for name, _version in service.resolved.source_tokens:
            record = self.tokens.get(name)
            if record is not None and record.owner:
                owners.append(record.owner)
        run_as = service.resolved.core.get("run-as-user")
        return self.permissions.service_problem(caller.user, service_id, run_as, owners, what)

    def admit_now(
        self,
        request: AuthRequest,
        method: str,
        path: str,
        url: str,
        api: bool,
        headers: tuple[tuple[str, str], ...],
        host: str | None,
    ) -> Admission | None:
        """``admit`` without waiting, for the requests that need no authenticator's I/O (a valid auth cookie, the
        one-user authenticator, public endpoints, tokens with authentication disabled); None for the others."""
        step = self._before_authentication(request, method, path, url, api, headers, host)
        if isinstance(step, Admission):
            return step
        admission = self.gate.authenticate_now(request)
        return None if admission is None else self._after_authentication(step, admission, method, path)

    async def admit(
        self,
        request: AuthRequest,
        method: str,
        path: str,
        url: str,
        api: bool,
        headers: tuple[tuple[str, str], ...],
        host: str | None,
    ) -> Admission:
        """Authentication and the API's authorization, for every request, before anything else is done for it.

        API requests: by the endpoint's declared policy (public ones are not authenticated). Proxied requests:
        authenticated unless their one token disables authentication; what they may run is checked once the
        service is resolved (resolve_for)."""
        step = self._before_authentication(request, method, path, url, api, headers, host)
        if isinstance(step, Admission):
            return step
        return self._after_authentication(step, await self.gate.authenticate(request), method, path)

    def _before_authentication(
        self,
        request: AuthRequest,
        method: str,
        path: str,
        url: str,
        api: bool,
        headers: tuple[tuple[str, str], ...],
        host: str | None,
    ) -> Admission | Access | bytes:
        """What ``admit`` decides before asking who calls: the whole answer (an Admission), or what to do once the
        caller is known: the API endpoint's policy to authorize, or a proxied request's CORS response lines."""
        if api:
            policy = self.routes.policy(path, method)
            return PUBLIC if policy is Access.PUBLIC else policy
        resolved = self.before_auth(headers, host)
        if resolved is None:
            return b""
        meta = resolved.token_meta
        # Header lookups only for tokens that ask for these steps: this runs for every proxied request.
        if meta.get("https-redirect") is True:
            proto = request.headers.get("x-forwarded-proto", "").lower()
            secure = proto == "https" and self._trusted_proxy(request.peer)
            redirect = cors.https_redirect(meta, method, host, url, secure)
            if redirect is not None:
                return Admission(None, answer=(301 if method in ("GET", "HEAD") else 307, redirect))
        lines = b""
        if meta.get("cors-rules"):
            preflight = cors.preflight(meta, method, path, request.headers)
            if preflight is not None:
                return Admission(None, answer=(204, preflight))
            lines = header_lines(cors.response_headers(meta, method, path, request.headers.get("origin", "")))
        disabled = resolved.core.get("authentication") == "disabled"
        if disabled and len(resolved.source_tokens) == 1 and not resolved.on_the_fly:
            return Admission(None, response_lines=lines)
        return lines

    def _after_authentication(
        self, step: Access | bytes, admission: Admission, method: str, path: str
    ) -> Admission:
        if isinstance(step, Access):
            assert admission.caller is not None
            self._authorize(step, admission.caller, method, path)
            return admission
        return replace(admission, response_lines=admission.response_lines + step) if step else admission

    def _trusted_proxy(self, peer: str) -> bool:
        try:
            address = ipaddress.ip_address(peer)
        except ValueError:
            return False
        return any(address in network for network in self._trusted_proxies)

    def _authorize(self, policy: Access, caller: Caller, method: str, path: str) -> None:
        problem: str | None = None
        if policy is Access.ADMIN:
            problem = self.permissions.admin_problem(caller.user, f"{method} {path}")
        elif policy is Access.SERVICE_OWNER:
            service_id = admin.service_id_of(path)
            if service_id:
                problem = self.service_owner_problem(caller, service_id, _action(method, path))
        if problem is not None:
            raise WaiterError(403, problem, error_class="waiter.Forbidden")

    def caller_of(self, request: web.BaseRequest) -> Caller:
        """The caller the front door authenticated (an endpoint whose policy is not public)."""
        caller = read_caller(request.headers.get(CALLER_HEADER))
        if caller is None:
            raise WaiterError(401, "Authentication required.", error_class="waiter.Unauthorized")
        return caller

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        """The aiohttp app's one handler: the admin API. The front door (waiter.exchange) relays only requests it
        found to be the router's own; everything proxied to a service stays on the front door. It serves only requests
        the front door stamped (see waiter.auth.stamp)."""
        cid = printable(request.headers.get("x-cid") or new_cid())
        if not self.stamp.genuine(request.headers.get(SECRET_HEADER)):
            err = WaiterError(
                403,
                "This port serves only the router's own front door; send requests to the router's public address.",
                error_class="waiter.Forbidden",
            )
            return render_error(request, err, cid)
        headers = tuple(
            (name.lower(), value) for name, value in request.headers.items() if name[:9].lower() == "x-waiter-"
        )
        request[CID] = cid
        received_at = time.time()
        try:
            await self._load_pseudo_tokens(headers)
            response = await self.routes.dispatch(self, request, headers)
            if not response.prepared:
                response.headers["x-cid"] = cid
            return response
        except WaiterError as err:
            if wants_debug(headers):
                version = f"HTTP/{request.version.major}.{request.version.minor}"
                add_to_error(err, DebugInfo(self.settings.router_id, cid, received_at, version))
            return render_error(request, err, cid)
        except Exception:
            log.exception("internal error on %s %s (cid %s)", request.method, printable(request.path), cid)
            return render_error(request, internal_error(cid), cid)
