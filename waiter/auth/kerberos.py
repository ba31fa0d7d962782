"""SPNEGO (``Authorization: Negotiate``) with Kerberos, through the ``gssapi`` binding of the system's GSSAPI.

A request without Negotiate credentials is not recognised (the next authenticator is asked; the 401 offers
``WWW-Authenticate: Negotiate``). Accepting a token reads the keytab and may replay-check on disk, so it runs in a
worker thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from typing import Any

from waiter.auth.base import AuthRequest, Caller, Identity, authorization, unauthenticated, user_of
from waiter.errors import WaiterError
from waiter.settings import KerberosConfig

log = logging.getLogger(__name__)


def _refusal(error: Exception) -> str:
    """Why GSSAPI refused a ticket, in our words (its messages quote the mechanism's internals)."""
    from gssapi.raw import exceptions as gss

    if isinstance(error, gss.ExpiredCredentialsError | gss.ExpiredContextError | gss.ExpiredTokenError):
        return "it has expired; get a new ticket (kinit)"
    if isinstance(error, gss.DuplicateTokenError | gss.TokenTooLateError):
        return "it was already used (a replay)"
    if isinstance(error, gss.BadMechanismError):
        return "the credentials are not a Kerberos token in SPNEGO"
    return "it is malformed, or for a service whose key is not in this router's keytab"


class KerberosAuthenticator:
    name = "kerberos"
    schemes = frozenset({"negotiate"})
    challenges: tuple[str, ...] = ("Negotiate",)

    def __init__(self, config: KerberosConfig) -> None:
        self.config = config
        self._credentials: Any = None

    async def start(self) -> None:
        self._credentials = await asyncio.to_thread(self._acceptor_credentials)

    async def close(self) -> None:
        self._credentials = None

    def _acceptor_credentials(self) -> Any:
        import gssapi
        from gssapi.raw import GSSError

        name = None
        if self.config.service_principal:
            name = gssapi.Name(self.config.service_principal, gssapi.NameType.kerberos_principal)
        store: dict[bytes | str, bytes | str] | None = None
        if self.config.keytab:
            store = {"keytab": str(self.config.keytab)}
        try:
            return gssapi.Credentials(name=name, usage="accept", store=store)
        except GSSError as exc:
            raise RuntimeError(
                f"The kerberos authenticator cannot use the keytab {self.config.keytab or '(default)'}"
                f"{' for ' + self.config.service_principal if self.config.service_principal else ''}: {exc}"
            ) from exc

    def _fail(self, message: str) -> WaiterError:
        return unauthenticated(message, self.challenges)

    async def authenticate(self, request: AuthRequest) -> Identity | None:
        scheme, credentials = authorization(request)
        if scheme != "negotiate":
            return None
        try:
            token = base64.b64decode(credentials, validate=True)
        except (binascii.Error, ValueError):
            raise self._fail("The Negotiate credentials are not base64.") from None
        if not token:
            raise self._fail("The Negotiate credentials are empty.")
        principal, reply = await asyncio.to_thread(self._accept, token)
        # The acceptor's token lets the client check that it talks to the service it asked for (mutual auth).
        answer = (("www-authenticate", "Negotiate " + base64.b64encode(reply).decode()),) if reply else ()
        return Identity(Caller(user_of(principal), principal, self.name), answer)

    def _accept(self, token: bytes) -> tuple[str, bytes | None]:
        import gssapi
        from gssapi.raw import GSSError

        try:
            context = gssapi.SecurityContext(creds=self._credentials, usage="accept")
            reply = context.step(token)
            # SPNEGO may answer a bad ticket with an error token: the failure surfaces when the context is read.
            if not context.complete:
                raise self._fail("The Negotiate exchange needs more than one round, which this router does not do.")
            return str(context.initiator_name), reply
        except GSSError as exc:
            log.info("Kerberos ticket refused: %s", exc.gen_message())
            raise self._fail(f"The Kerberos ticket was not accepted: {_refusal(exc)}.") from None
