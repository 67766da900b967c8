"""The Host check of ``saliencydb serve``: a request is answered only when its ``Host`` header names this server.

A web page on another site can make the user's browser send requests to a local port; with DNS rebinding its
own name resolves to 127.0.0.1, so the browser treats the app as that page's origin and lets it read the
answers. Such a request carries the page's name in ``Host``. Refusing every name that is not the server's own
(loopback names for a loopback bind; any IP address otherwise, since an address cannot be rebound; plus the
names given with ``--allow-host``) closes that door (docs/web-app.md)."""

from __future__ import annotations

import ipaddress

from .auth import refuse

LOOPBACK_NAMES = ("localhost",)


def host_name(header: str) -> str:
    """The name in a ``Host`` header, without its port, lower case, without a trailing dot; '' when malformed."""
    text = header.strip().lower()
    if text.startswith("["):  # an IPv6 literal: [::1]:8765
        end = text.find("]")
        return text[1:end] if end > 0 and (len(text) == end + 1 or text[end + 1] == ":") else ""
    name = text.rsplit(":", 1)[0] if text.count(":") == 1 else text
    return name.rstrip(".") if ":" not in name else ""


def _ip(name: str):
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


class HostPolicy:
    """Which ``Host`` names a server bound to ``bind`` answers: loopback names and addresses for a loopback bind;
    any IP address and this machine's names for another bind; and ``extra`` names either way."""

    def __init__(self, bind: str = "127.0.0.1", extra: tuple[str, ...] = ()):
        self.loopback_only = is_loopback(bind)
        self.names = {n.lower().rstrip(".") for n in extra} | set(LOOPBACK_NAMES)
        if not self.loopback_only:
            import socket

            self.names |= {socket.gethostname().lower(), socket.getfqdn().lower()}

    def allows(self, header: str) -> bool:
        name = host_name(header)
        if not name:
            return False
        if name in self.names:
            return True
        ip = _ip(name)
        return ip is not None and (ip.is_loopback or not self.loopback_only)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    ip = _ip(host)
    return ip is not None and ip.is_loopback


class HostCheck:
    """ASGI middleware: a request whose ``Host`` the policy refuses gets a 403 with one line, and never reaches the app."""

    def __init__(self, app, policy: HostPolicy):
        self.app, self.policy = app, policy

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        host = headers.get(b"host", b"").decode("latin-1")
        if self.policy.allows(host):
            return await self.app(scope, receive, send)
        shown = host_name(host) or host[:80]
        await refuse(scope, send, 403, f"host '{shown}' is not served here (a page of another site?); open the address "
                                       f"serve printed, or start it with --allow-host {shown or 'NAME'}")
