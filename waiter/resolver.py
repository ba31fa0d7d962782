"""Request headers -> the service they address (docs/api.md §3), cached per distinct set of waiter headers."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from waiter import descriptor
from waiter.descriptor import DescriptorError, RequestOptions
from waiter.errors import WaiterError
from waiter.service import ResolvedService
from waiter.settings import Settings
from waiter.tokens import TokenRegistry, token_etag
from waiter.validation import validate_service

SERVICE_ID_TOKEN = "^SERVICE-ID#"
_CACHE_LIMIT = 10_000

CacheKey = tuple[tuple[tuple[str, str], ...], str | None, str]


def names_token(waiter_headers: tuple[tuple[str, str], ...]) -> bool:
    """Whether the request names its token(s) in x-waiter-token (then the Host header names none)."""
    # A loop, not any() over a generator: one left unfinished is closed by throwing GeneratorExit into it, which
    # costs more than the whole search (this runs for every request).
    for name, _ in waiter_headers:  # noqa: SIM110
        if name == "x-waiter-token":
            return True
    return False


def cacheable(resolved: ResolvedService) -> bool:
    """Whether a resolution may be kept until the tokens change: not one through a ^SERVICE-ID# pseudo-token,
    whose service's description comes from the registry, not from a token."""
    return all(not name.startswith(SERVICE_ID_TOKEN) for name, _ in resolved.source_tokens)


class Resolver:
    def __init__(
        self,
        settings: Settings,
        tokens: TokenRegistry,
        core_by_service_id: Callable[[str], Mapping[str, Any] | None],
    ) -> None:
        self.settings = settings
        self.tokens = tokens
        self.core_by_service_id = core_by_service_id
        self._cache: dict[CacheKey, tuple[ResolvedService, RequestOptions]] = {}
        self._generation = tokens.generation

    def host_token(self, host: str | None) -> str | None:
        """The Host header (port stripped) when it names a token and is not one of the router's own names."""
        if not host:
            return None
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        name = name.lower()
        if name in ("localhost", "127.0.0.1", "[::1]") or name in self.settings.hostnames:
            return None
        return name if self.tokens.get(name) is not None else None

    def resolve(
        self, waiter_headers: tuple[tuple[str, str], ...], host: str | None, user: str | None = None
    ) -> tuple[ResolvedService, RequestOptions]:
        """What ``user`` (default: run-as-user) addresses: services that run as the requester differ per caller.
        Raises WaiterError (400 bad input, 403 not allowed, 404 unknown token)."""
        user = user or self.settings.run_as_user
        generation = self.tokens.generation
        if self._generation != generation or len(self._cache) > _CACHE_LIMIT:
            self._cache.clear()
            self._generation = generation
        # Keyed by the Host header itself: the token it names changes only with the tokens' generation.
        key = (waiter_headers, host, user)
        hit = self._cache.get(key)
        if hit is None:
            host_token = None if names_token(waiter_headers) else self.host_token(host)
            hit = self._resolve(waiter_headers, host_token, user)
            if cacheable(hit[0]):
                self._cache[key] = hit
        return hit

    def resolve_version(
        self,
        waiter_headers: tuple[tuple[str, str], ...],
        host: str | None,
        token: str,
        data: Mapping[str, Any],
        user: str | None = None,
    ) -> ResolvedService:
        """What the request would resolve to if ``token`` held ``data`` (an earlier version, for fallback)."""
        host_token = None if names_token(waiter_headers) else self.host_token(host)
        return self._resolve(waiter_headers, host_token, user or self.settings.run_as_user, (token, data))[0]

    def token_service_id(self, token: str) -> str | None:
        """The service a request naming only ``token`` reaches now; None if the token cannot be resolved."""
        try:
            return self.resolve((("x-waiter-token", token),), None)[0].service_id
        except WaiterError:
            return None

    def _resolve(
        self,
        waiter_headers: tuple[tuple[str, str], ...],
        host_token: str | None,
        user: str,
        version: tuple[str, Mapping[str, Any]] | None = None,
    ) -> tuple[ResolvedService, RequestOptions]:
        try:
            parsed = descriptor.parse_headers(waiter_headers)
        except DescriptorError as exc:
            raise _bad_request(exc) from None
        if parsed.on_the_fly and not self.settings.allow_on_the_fly:
            given = sorted(f"x-waiter-{k}" for k in parsed.params if k != "env" or parsed.params["env"])
            raise WaiterError(
                403,
                "On-the-fly services are disabled on this router, so only registered tokens may run commands; "
                f"remove the service-parameter header(s) {', '.join(given)} or register a token.",
                error_class="waiter.ServiceForbidden",
            )
        names: tuple[str, ...] = parsed.tokens or ((host_token,) if host_token else ())
        params_list: list[Mapping[str, Any]] = []
        meta_list: list[Mapping[str, Any]] = []
        sources: list[tuple[str, str]] = []
        for name in names:
            if name.startswith(SERVICE_ID_TOKEN):
                core = self.core_by_service_id(name[len(SERVICE_ID_TOKEN) :])
                if core is None:
                    raise WaiterError(404, f"Couldn't find token {name}", error_class="waiter.ServiceUnknown")
                params_list.append(core)
                sources.append((name, ""))
                continue
            if version is not None and version[0] == name:
                data, etag = version[1], token_etag(version[1])
            else:
                record = self.tokens.get(name)
                if record is None:
                    problem = self.tokens.problem_for(name)
                    if problem is not None:
                        raise WaiterError(
                            503,
                            f"Token {name} could not be loaded from its file: {problem}\n"
                            "Fix the file; the router reloads it when it changes.",
                            error_class="waiter.ServiceMisconfigured",
                        )
                    raise WaiterError(404, f"Couldn't find token {name}", error_class="waiter.ServiceUnknown")
                data, etag = record.data, record.etag
            params, meta = descriptor.split_token(data)
            params_list.append(params)
            meta_list.append(meta)
            sources.append((name, etag))
        try:
            core = descriptor.build_core(descriptor.merge_tokens(params_list), parsed, user, has_token=bool(names))
            validate_service(core, max_cpus=self.settings.max_cpus, max_mem=self.settings.max_mem)
        except DescriptorError as exc:
            raise _bad_request(exc) from None
        meta = descriptor.token_defaults(descriptor.merge_tokens(meta_list))
        resolved = ResolvedService(
            service_id=descriptor.service_id(core, self.settings.service_prefix),
            core=core,
            effective=descriptor.effective(core, self.settings.service_defaults),
            token_meta=meta,
            source_tokens=tuple(sources),
            on_the_fly=parsed.on_the_fly,
        )
        return resolved, parsed.options


def _bad_request(exc: DescriptorError) -> WaiterError:
    return WaiterError(exc.status, str(exc), error_class="waiter.ServiceMisconfigured")
