"""GET/POST/DELETE /token and GET /tokens (docs/api.md §1.2-1.5, §2.4, §2.5).

Messages start with the sentence Waiter clients know (``Cannot modify stale token``, ...) and, where it helps,
add what to do after a newline, as Waiter's own friendlier explanations do (§0.1).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web

from waiter.api import watch
from waiter.api.common import included, json_response, query_true, read_json
from waiter.api.filters import Filter, lookup
from waiter.auth import Access, Caller, Permissions, access
from waiter.descriptor import REQUIRED_PARAMS, DescriptorError
from waiter.errors import WaiterError, iso_millis
from waiter.tokens import StaleWrite, StoreUnavailable, TokenRecord, token_etag
from waiter.tokens.records import (
    EDITABLE,
    editable,
    history,
    name_problem,
    new_record,
    parse_time,
    service_params,
    shown,
)
from waiter.tokens.records import soft_deleted as soft_deleted_record
from waiter.validation import validate_token

if TYPE_CHECKING:
    from waiter.api.admin import Handler
    from waiter.router import Router

Headers = tuple[tuple[str, str], ...]

LIMIT_PER_OWNER = 1000  # live tokens one owner may hold (outside update-mode=admin)
PROTECTED = ("last-update-time", "last-update-user", "root", "previous", "deleted")  # update-mode=admin only
_ATTEMPTS = 5  # compare-and-set retries when another writer changes the token between read and write
_LOCAL_HOSTS = frozenset({"", "localhost", "127.0.0.1", "[::1]", "::1"})


# -- small helpers -------------------------------------------------------------------------------------------


def _now_ms() -> int:
    return int(time.time() * 1000)


def _header_token(headers: Headers) -> str | None:
    value = next((v for k, v in headers if k == "x-waiter-token"), "").strip()
    return value or None


def _host_token(router: Router, request: web.BaseRequest) -> str | None:
    """The Host header (port stripped) when it is not one of the router's own names (docs/api.md §1.2)."""
    host = request.headers.get("host", "")
    host = (host.rsplit(":", 1)[0] if not host.endswith("]") else host).lower()
    settings = router.settings
    if host in _LOCAL_HOSTS or host in settings.hostnames or host == settings.host.lower():
        return None
    return host


def _reply(body: Any, *, etag: str | None = None, result: str | None = None) -> web.Response:
    response = json_response(body)
    if etag:
        response.headers["etag"] = etag
    if result:
        response.headers["x-waiter-operation-result"] = result
    return response


def _unavailable(exc: StoreUnavailable) -> WaiterError:
    return WaiterError(503, str(exc))


async def _read(router: Router, name: str) -> TokenRecord | None:
    try:
        return await router.tokens.read(name)
    except StoreUnavailable as exc:
        raise _unavailable(exc) from None


async def _write(router: Router, name: str, data: Mapping[str, Any] | None, expected: TokenRecord | None) -> bool:
    """False when another writer got there first (read again and redo the checks)."""
    try:
        await router.tokens.store.write(name, data, expected=expected)
    except StaleWrite:
        return False
    except StoreUnavailable as exc:
        raise _unavailable(exc) from None
    return True


def _refuse_file_token(router: Router, name: str) -> None:
    record = router.tokens.file_token(name)
    if record is not None:
        raise WaiterError(
            409,
            f"Token {name} is defined in {record.source} and is read-only through the API; edit the file instead.",
        )


def _check_if_match(if_match: str | None, current: str, name: str) -> None:
    if if_match is not None and if_match != current:
        state = f"is now at {current}" if current else "does not exist (send an empty If-Match to create it)"
        raise WaiterError(
            412,
            f"Cannot modify stale token\nThe If-Match header is {if_match or 'empty'} but token {name} {state}; "
            "read it again (GET /token) and retry with its ETag.",
        )


def _too_busy(name: str) -> WaiterError:
    return WaiterError(503, f"Token {name} kept changing while this request tried to save it; try again.")


# -- GET /token ----------------------------------------------------------------------------------------------


@access(Access.AUTHENTICATED)
async def get_token(router: Router, request: web.BaseRequest, headers: Headers) -> web.Response:
    name = request.query.get("token") or _header_token(headers) or _host_token(router, request)
    if not name:
        raise WaiterError(400, "Couldn't find token in request\nGive it as ?token=NAME or in x-waiter-token.")
    record = await _read(router, name)
    if record is None or (record.deleted and not included(request, "deleted")):
        raise WaiterError(404, f"Couldn't find token {name}")
    body = shown(record.data, metadata=included(request, "metadata"), cluster=router.settings.cluster_name)
    return _reply(body, etag=None if record.deleted else record.etag)


# -- POST /token ---------------------------------------------------------------------------------------------


async def _json_object(router: Router, request: web.BaseRequest) -> dict[str, Any]:
    body = await read_json(request, router.settings.max_api_body_bytes)
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise WaiterError(400, f"The request body must be a JSON object of token fields, not {type(body).__name__}.")
    return body


def _post_name(request: web.BaseRequest, body: dict[str, Any]) -> str:
    in_query = request.query.get("token")
    in_body = body.pop("token", None)
    if in_query is not None and in_body is not None:
        raise WaiterError(400, "The token should be provided only as a query parameter or in the json payload")
    name = in_query if in_query is not None else in_body
    if not isinstance(name, str) or not name.strip():
        raise WaiterError(400, 'Must provide the token\nGive it as ?token=NAME or as "token" in the JSON body.')
    return name


def _update_mode(request: web.BaseRequest) -> bool:
    """True for update-mode=admin."""
    mode = request.query.get("update-mode")
    if mode not in (None, "admin"):
        raise WaiterError(400, f"Invalid update-mode\nupdate-mode is {mode!r} but the only mode is 'admin'.")
    return mode == "admin"


def _validate(router: Router, name: str, body: Mapping[str, Any], admin: bool) -> None:
    """docs/api.md §2.5, in its order."""
    if name.lower() in router.settings.hostnames:
        raise WaiterError(403, f"Token name is reserved\n{name} is one of this router's host names.")
    if not EDITABLE & body.keys():
        raise WaiterError(400, f"No parameters provided for {name}")
    problem = name_problem(name)
    if problem:
        raise WaiterError(400, problem)
    try:
        validate_token(body, max_cpus=router.settings.max_cpus, max_mem=router.settings.max_mem)
    except DescriptorError as exc:
        raise WaiterError(exc.status, str(exc), error_class="waiter.ServiceMisconfigured") from None
    protected = [key for key in PROTECTED if key in body]
    if protected and not admin:
        raise WaiterError(400, f"Cannot modify {protected[0]} token metadata\nOnly update-mode=admin may set it.")
    for key in ("cluster", "root", "last-update-user"):
        if key in body and (not isinstance(body[key], str) or not body[key]):
            raise WaiterError(400, f"{key} is {json.dumps(body[key])} but must be a non-empty string.")
    if "previous" in body and not isinstance(body["previous"], dict):
        raise WaiterError(400, f"Token previous must be a map, not {json.dumps(body['previous'])}.")
    if "deleted" in body and not isinstance(body["deleted"], bool):
        raise WaiterError(400, f"deleted is {json.dumps(body['deleted'])} but must be true or false.")


def _new_data(
    router: Router, body: Mapping[str, Any], caller: Caller, owner: str, existing: TokenRecord | None, admin: bool
) -> dict[str, Any]:
    data = new_record(
        body,
        owner=owner,
        user=caller.user,
        now_ms=_now_ms(),
        cluster=router.settings.cluster_name,
        existing=existing.data if existing else None,
    )
    if admin and "last-update-time" in body:
        try:
            data["last-update-time"] = parse_time(body["last-update-time"])
        except ValueError as exc:
            raise WaiterError(400, str(exc)) from None
    return data


def _check_post_permission(
    perms: Permissions, caller: Caller, name: str, live: TokenRecord | None, data: Mapping[str, Any]
) -> None:
    if live is None:
        problem = perms.create_problem(caller.user, name, str(data["owner"]))
    else:
        before, after = editable(live.data), editable(data)
        changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
        problem = perms.update_problem(caller.user, name, live.data, changed)
    if problem:
        raise WaiterError(403, problem)


async def _check_owner_limit(router: Router, name: str, owner: str, live: TokenRecord | None) -> None:
    if live is not None and live.owner == owner:
        return
    try:
        entries = await router.tokens.index([owner])
    except StoreUnavailable as exc:
        raise _unavailable(exc) from None
    count = sum(1 for e in entries if not e.deleted and e.token != name)
    if count >= LIMIT_PER_OWNER:
        raise WaiterError(
            403,
            f"You have reached the limit of number of tokens allowed\nOwner '{owner}' already has {count} tokens "
            f"and the limit is {LIMIT_PER_OWNER}; delete some first.",
        )


@dataclass(frozen=True)
class _Post:
    """One POST /token, validated: what each compare-and-set attempt works from."""

    name: str
    body: dict[str, Any]
    admin: bool  # update-mode=admin
    caller: Caller
    perms: Permissions
    if_match: str | None


@access(Access.AUTHENTICATED)
async def post_token(router: Router, request: web.BaseRequest, headers: Headers) -> web.Response:
    caller = router.caller_of(request)
    body = await _json_object(router, request)
    name = _post_name(request, body)
    admin = _update_mode(request)
    _validate(router, name, body, admin)
    _refuse_file_token(router, name)
    perms = Permissions.of(router.settings)
    problem = (
        perms.admin_problem(caller.user, f"update token {name} in update-mode=admin")
        if admin
        else perms.run_as_problem(caller.user, body.get("run-as-user"))
    )
    if problem:
        raise WaiterError(403, problem)
    post = _Post(name, body, admin, caller, perms, request.headers.get("if-match"))
    for _ in range(_ATTEMPTS):
        response = await _try_post(router, post)
        if response is not None:
            return response
    raise _too_busy(name)


async def _try_post(router: Router, post: _Post) -> web.Response | None:
    """Read, check, write; None when another writer changed the token in between (so: try again)."""
    name, admin = post.name, post.admin
    existing = await _read(router, name)
    live = existing if existing is not None and not existing.deleted else None
    if admin and live is not None and post.if_match is None:
        raise WaiterError(400, "Must specify if-match header for admin mode token updates")
    owner = post.body.get("owner") or (live.owner if live else None) or post.caller.user
    data = _new_data(router, post.body, post.caller, owner, existing, admin)
    if not admin:
        _check_post_permission(post.perms, post.caller, name, live, data)
    _check_if_match(post.if_match, live.etag if live else "", name)
    if not admin and live is not None and editable(live.data) == editable(data):
        unchanged = {"message": f"No changes detected for {name}", "service-description": service_params(live.data)}
        return _reply(unchanged, etag=live.etag, result="token-no-op")
    if not admin:
        await _check_owner_limit(router, name, owner, live)
    if not await _write(router, name, data, existing):
        return None
    verb = "updated" if live is not None else "created"
    saved = {"message": f"Successfully {verb} {name}", "service-description": service_params(data)}
    return _reply(saved, etag=token_etag(data), result=f"token-{verb}")


# -- DELETE /token -------------------------------------------------------------------------------------------


def _check_delete_permission(
    perms: Permissions, caller: Caller, name: str, existing: TokenRecord, hard: bool, if_match: str | None
) -> None:
    if hard:
        if not existing.deleted and if_match is None:
            raise WaiterError(
                400, "Must specify if-match header for token hard deletes\nSend the ETag from GET /token as If-Match."
            )
        problem = perms.admin_problem(caller.user, f"hard-delete token {name}")
    else:
        problem = perms.manage_problem(caller.user, name, existing.data, "delete")
    if problem:
        raise WaiterError(403, problem)


@access(Access.AUTHENTICATED)
async def delete_token(router: Router, request: web.BaseRequest, headers: Headers) -> web.Response:
    caller = router.caller_of(request)
    name = _header_token(headers) or _host_token(router, request)
    if not name:
        raise WaiterError(400, "Couldn't find token in request\nName the token in the x-waiter-token header.")
    hard = query_true(request, "hard-delete")
    _refuse_file_token(router, name)
    perms = Permissions.of(router.settings)
    if_match = request.headers.get("if-match")
    for _ in range(_ATTEMPTS):
        existing = await _read(router, name)
        if existing is None or (existing.deleted and not hard):
            raise WaiterError(404, f"Token {name} does not exist")
        _check_delete_permission(perms, caller, name, existing, hard, if_match)
        _check_if_match(if_match, existing.etag, name)
        data = None if hard else soft_deleted_record(existing.data, user=caller.user, now_ms=_now_ms())
        if await _write(router, name, data, existing):
            return _reply({"delete": name, "hard-delete": hard, "success": True}, etag=if_match, result="token-deleted")
    raise _too_busy(name)


# -- GET /tokens ---------------------------------------------------------------------------------------------


# GET /tokens query keys that are not field filters (docs/api.md §1.5)
_LIST_OPTIONS = frozenset(
    {
        "owner",
        "include",
        "maintenance",
        "run-as-requester",
        "requires-parameters",
        "can-manage-as-user",
        "parameters",
        "watch",
        "streaming-timeout",
    }
)


@dataclass(frozen=True)
class _TokenQuery:
    """The property filters of GET /tokens; None = not asked."""

    run_as_requester: bool | None
    requires_parameters: bool | None
    manager: str | None
    parameters: tuple[str, ...]

    @classmethod
    def of(cls, request: web.BaseRequest) -> _TokenQuery:
        def flag(name: str) -> bool | None:
            return query_true(request, name) if name in request.query else None

        return cls(
            flag("run-as-requester"),
            flag("requires-parameters"),
            request.query.get("can-manage-as-user"),
            tuple(request.query.getall("parameters", [])),
        )

    def keeps(self, name: str, data: Mapping[str, Any], perms: Permissions) -> bool:
        if self.run_as_requester is not None and (data.get("run-as-user") == "*") != self.run_as_requester:
            return False
        # A token that lacks a required service parameter serves only requests that send it as a header.
        requires = any(data.get(p) in (None, "") for p in REQUIRED_PARAMS)
        if self.requires_parameters is not None and requires != self.requires_parameters:
            return False
        return self.manager is None or perms.manage_problem(self.manager, name, data, "manage") is None


@access(Access.AUTHENTICATED)
async def list_tokens(router: Router, request: web.BaseRequest, headers: Headers) -> web.StreamResponse:
    if query_true(request, "watch"):

        async def snapshot() -> dict[str, Any]:
            return {item["token"]: item for item in await _listing(router, request)}

        return await watch.stream(request, snapshot, lambda: router.draining, lambda: router.tokens.generation)
    return json_response(await _listing(router, request))


async def _listing(router: Router, request: web.BaseRequest) -> list[dict[str, Any]]:
    owners = request.query.getall("owner", []) or None
    deleted, metadata = included(request, "deleted"), included(request, "metadata")
    maintenance = request.query.get("maintenance")
    filters = [Filter.of(key, value) for key, value in request.query.items() if key not in _LIST_OPTIONS]
    query, perms = _TokenQuery.of(request), Permissions.of(router.settings)
    try:
        entries = await router.tokens.index(owners)
    except StoreUnavailable as exc:
        raise _unavailable(exc) from None
    listed = []
    for entry in entries:
        if (entry.deleted and not deleted) or (
            maintenance is not None and entry.maintenance != (maintenance.lower() == "true")
        ):
            continue
        record = router.tokens.cached(entry.token)
        data = record.data if record is not None else {}
        if not all(wanted.matches(lookup(data, wanted.name)) for wanted in filters):
            continue
        if not query.keeps(entry.token, data, perms):
            continue
        item: dict[str, Any] = {
            "token": entry.token,
            "owner": entry.owner,
            "maintenance": entry.maintenance,
            "reference-type->reference-name": {},
        }
        if metadata:
            updated = entry.last_update_time
            item["deleted"] = entry.deleted
            item["etag"] = entry.etag
            item["last-update-time"] = iso_millis(updated / 1000) if updated is not None else None
        if query.parameters:
            item["parameters"] = {field: lookup(data, field) for field in query.parameters}
        listed.append(item)
    return listed


# -- token administration: history, owners, re-index ----------------------------------------------------------


@access(Access.AUTHENTICATED)
async def token_history(router: Router, request: web.BaseRequest, headers: Headers) -> web.Response:
    """Every kept version of a token (soft-deleted ones too), newest first, each with its ETag."""
    name = request.query.get("token")
    if not name:
        raise WaiterError(400, "Couldn't find token in request\nGive it as ?token=NAME.")
    record = await _read(router, name)
    if record is None:
        raise WaiterError(404, f"Couldn't find token {name}")
    return json_response(history(record.data, cluster=router.settings.cluster_name))


@access(Access.AUTHENTICATED)
async def token_owners(router: Router, request: web.BaseRequest, headers: Headers) -> web.Response:
    """Each owner in the index with how many live and soft-deleted tokens it holds."""
    try:
        entries = await router.tokens.index(None)
    except StoreUnavailable as exc:
        raise _unavailable(exc) from None
    owners: dict[str, dict[str, int]] = {}
    for entry in entries:
        counts = owners.setdefault(entry.owner, {"tokens": 0, "deleted": 0})
        counts["deleted" if entry.deleted else "tokens"] += 1
    return json_response(owners)


@access(Access.ADMIN)
async def reindex_tokens(router: Router, request: web.BaseRequest, headers: Headers) -> web.Response:
    """Rebuild the owner index behind /tokens from the token records (token admins only: the policy says so)."""
    try:
        count = await router.tokens.store.reindex()
    except StoreUnavailable as exc:
        raise _unavailable(exc) from None
    return json_response({"message": f"Re-indexed {count} tokens", "tokens": count})


EXACT: dict[str, dict[str, Handler]] = {
    "/token": {"GET": get_token, "POST": post_token, "DELETE": delete_token},
    "/tokens": {"GET": list_tokens},
    "/token-history": {"GET": token_history},
    "/tokens/owners": {"GET": token_owners},
    "/tokens/reindex": {"POST": reindex_tokens},
}
