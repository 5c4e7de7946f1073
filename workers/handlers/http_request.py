"""`http_request`: one HTTP request to a host in HTTP_REQUEST_ALLOWED_HOSTS, checked for its status.

An allow-list entry is either "scheme://host[:port]" (that scheme, host and port exactly, the port
defaulting to the scheme's) or a bare "host" (http on 80 or https on 443). Hosts compare
case-insensitively (internationalised names in their IDNA form), without wildcards. An empty list
allows nothing. Redirects are not followed: the next hop could be anywhere.

The URL is parsed once, by httpx, and the object that passed the check is the one requested, so the
check and the request cannot disagree about the host. Its name is then resolved once: an address that is not
globally reachable (loopback, private, link-local with the cloud metadata services, shared, reserved,
unspecified) or multicast is refused unless that very address is allow-listed, and the request connects to
the address that was checked (the name still goes in `Host` and in TLS's SNI and certificate check), so a
name whose DNS answer changes between the check and the connection (rebinding) cannot lead it elsewhere. Proxy
variables of the environment are ignored: the request goes where it was checked to go.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import time
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import httpx
from pydantic import ConfigDict, Field, field_validator

from app.job_types.registry import Payload, RunContext, job_type
from app.platform.config import Settings

DEFAULT_PORTS = {"http": 80, "https": 443}
SETTING = "HTTP_REQUEST_ALLOWED_HOSTS"
SNIPPET_CHARS = 200
# Headers that would make the request say something other than what the allow-list checked.
FORBIDDEN_HEADERS = frozenset({"host"})

Status = Annotated[int, Field(ge=100, le=599)]


def parse_url(url: str) -> httpx.URL:
    """An absolute http(s) URL with a host, else ValueError."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise ValueError(f"invalid URL {url!r}: {exc}") from None
    if parsed.scheme not in DEFAULT_PORTS:
        raise ValueError(f"only http and https URLs can be requested, got {url!r}")
    if not parsed.raw_host:
        raise ValueError(f"URL {url!r} has no host")
    return parsed


def _host(url: httpx.URL) -> str:
    host = url.raw_host.decode("ascii").lower()
    if ":" in host:  # one spelling per IPv6 address
        with contextlib.suppress(ValueError):
            return str(ipaddress.IPv6Address(host))
    return host


def _port(url: httpx.URL) -> int:
    return url.port or DEFAULT_PORTS[url.scheme]


def _origin(url: httpx.URL) -> str:
    host = _host(url)
    return f"{url.scheme}://{f'[{host}]' if ':' in host else host}:{_port(url)}"


def shown(url: httpx.URL) -> str:
    """The URL for summaries and errors: without user name and password."""
    return str(url.copy_with(username=None, password=None)) if url.userinfo else str(url)


@dataclass(frozen=True)
class _Entry:
    host: str
    scheme: str | None = None  # None: a bare host, any scheme and port
    port: int | None = None


def _malformed(entry: str) -> ValueError:
    return ValueError(f"{SETTING} entry {entry!r} is neither 'scheme://host[:port]' nor a bare host")


def _parse_entry(entry: str) -> _Entry:
    text = entry.strip()
    if "://" in text:
        try:
            url = parse_url(text)
        except ValueError:
            raise _malformed(entry) from None
        if url.userinfo or url.path not in ("", "/") or url.query or url.fragment:
            raise _malformed(entry)
        return _Entry(host=_host(url), scheme=url.scheme, port=_port(url))
    if any(c in text for c in "/?#@"):
        raise _malformed(entry)
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if ":" in text:
        # Only an IPv6 address may contain colons; "host:port" needs a scheme.
        try:
            return _Entry(host=str(ipaddress.IPv6Address(text)))
        except ValueError:
            raise _malformed(entry) from None
    try:
        url = httpx.URL(f"http://{text}")
    except httpx.InvalidURL:
        raise _malformed(entry) from None
    if not url.raw_host:
        raise _malformed(entry)
    return _Entry(host=_host(url))


def _matches(entry: _Entry, host: str, scheme: str, port: int) -> bool:
    if entry.host != host:
        return False
    if entry.scheme is None:
        return port == DEFAULT_PORTS[scheme]  # a bare host: its scheme's own port, not every port
    return (entry.scheme, entry.port) == (scheme, port)


def _check(url: httpx.URL, allowed: list[str]) -> None:
    host, scheme, port = _host(url), url.scheme, _port(url)
    entries = [_parse_entry(e) for e in allowed if e.strip()]
    if any(_matches(entry, host, scheme, port) for entry in entries):
        return
    hint = ", which is empty" if not entries else ""
    raise ValueError(f"host '{_origin(url)}' is not in {SETTING}{hint}")


NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")


def _embedded(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 one carries (mapped, NAT64, 6to4, Teredo, IPv4-compatible): what it may reach."""
    found = [a for a in (address.ipv4_mapped, address.sixtofour) if a is not None]
    if address.teredo is not None:
        found += list(address.teredo)
    if address in NAT64 or (address in IPV4_COMPATIBLE and int(address) > 1):
        found.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return found


def _internal(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    # Not globally reachable (loopback, private, link-local, shared, documentation, reserved, unspecified…), or
    # multicast (which Python counts as global); for IPv6, also whatever IPv4 address it carries.
    if isinstance(address, ipaddress.IPv6Address) and any(_internal(a) for a in _embedded(address)):
        return True
    return not address.is_global or address.is_multicast


async def resolve_checked(url: httpx.URL, allowed: list[str]) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The address to connect to for `url` (already allowed by name): resolved once, and refused when it is an
    internal one that the allow-list does not name as such."""
    host = _host(url)
    try:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(host)
    except ValueError:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, _port(url), type=socket.SOCK_STREAM)
        except OSError as exc:
            raise ValueError(f"cannot resolve {host!r}: {exc}") from None
        address = ipaddress.ip_address(infos[0][4][0])
    if _internal(address):
        literal = address.compressed
        entries = [_parse_entry(e) for e in allowed if e.strip()]
        if not any(_matches(entry, literal, url.scheme, _port(url)) for entry in entries):
            raise ValueError(
                f"host {host!r} resolves to {literal}, an internal address; {SETTING} must name that address "
                "itself to allow it"
            )
    return address


def check_allowed(url: str, allowed: list[str]) -> None:
    """Raise ValueError unless `url` is an http(s) URL that the allow-list `allowed` permits."""
    _check(parse_url(url), allowed)


class HttpRequestPayload(Payload):
    model_config = ConfigDict(populate_by_name=True)

    url: str = Field(description="An http or https URL whose host is in HTTP_REQUEST_ALLOWED_HOSTS")
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"] = "GET"
    headers: dict[str, str] = Field(default_factory=dict)
    body: str | None = None
    timeout: float = Field(default=30, gt=0, le=300, description="Seconds for the whole request")
    expect_status: Status | Annotated[list[Status], Field(min_length=1)] = Field(
        default=200, alias="expectStatus", description="The status, or statuses, that count as success"
    )

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parse_url(value)
        return value

    @field_validator("headers")
    @classmethod
    def _no_host_header(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if name.strip().lower() in FORBIDDEN_HEADERS:
                raise ValueError(f"the {name!r} header cannot be set")
        return value

    def expected(self) -> list[int]:
        return [self.expect_status] if isinstance(self.expect_status, int) else list(self.expect_status)


async def _snippet(response: httpx.Response) -> str:
    """The start of the body, on one line, without downloading the rest."""
    data = b""
    # A body that fails to arrive must not hide the status it came with.
    with contextlib.suppress(httpx.HTTPError):
        async for chunk in response.aiter_bytes():
            data += chunk
            if len(data) >= SNIPPET_CHARS * 4:
                break
    return " ".join(data.decode("utf-8", errors="replace").split())[:SNIPPET_CHARS]


async def _send(
    payload: HttpRequestPayload, url: httpx.URL, address: ipaddress.IPv4Address | ipaddress.IPv6Address
) -> tuple[httpx.Response, str]:
    expected = payload.expected()
    # To the address that was checked; the name in Host and in TLS (SNI, certificate check).
    target = url.copy_with(host=address.compressed)
    headers = {**payload.headers, "Host": url.netloc.decode("ascii")}
    extensions = {"sni_hostname": _host(url)} if url.scheme == "https" else {}
    async with (
        # No proxy or .netrc from the environment (trust_env=False); its CA settings (SSL_CERT_FILE, SSL_CERT_DIR)
        # still apply through the transport.
        httpx.AsyncClient(
            timeout=payload.timeout,
            follow_redirects=False,
            trust_env=False,
            transport=httpx.AsyncHTTPTransport(trust_env=True),
        ) as client,
        client.stream(payload.method, target, headers=headers, content=payload.body, extensions=extensions) as response,
    ):
        snippet = "" if response.status_code in expected else await _snippet(response)
    return response, snippet


def allowed_at_creation(payload: HttpRequestPayload, settings: Settings) -> None:
    """Refuse a job whose URL the allow-list does not permit when it is created, not only when it runs."""
    check_allowed(payload.url, settings.http_request_allowed_hosts)


@job_type(
    "http_request",
    "Sends one HTTP request to a host in HTTP_REQUEST_ALLOWED_HOSTS and checks the status (redirects not followed)",
    HttpRequestPayload,
    check=allowed_at_creation,
)
async def http_request(ctx: RunContext) -> dict[str, Any]:
    payload: HttpRequestPayload = ctx.payload
    url = parse_url(payload.url)
    _check(url, ctx.settings.http_request_allowed_hosts)
    what = f"{payload.method} {shown(url)}"
    started = time.monotonic()
    try:
        async with asyncio.timeout(payload.timeout):
            address = await resolve_checked(url, ctx.settings.http_request_allowed_hosts)
            response, snippet = await _send(payload, url, address)
    except (TimeoutError, httpx.TimeoutException):
        raise TimeoutError(f"no answer from {what} within {payload.timeout:g} s") from None
    except httpx.HTTPError as exc:
        raise ValueError(f"{what} failed: {str(exc) or type(exc).__name__}") from exc
    elapsed_ms = round((time.monotonic() - started) * 1000)
    status = response.status_code
    expected = payload.expected()
    if status not in expected:
        message = f"HTTP {status} from {what}, expected {' or '.join(map(str, expected))}"
        if response.is_redirect:
            message += f" (redirect to {response.headers.get('location')} not followed)"
        elif snippet:
            message += f": {snippet}"
        raise ValueError(message)
    return {
        "summary": f"HTTP {status} from {what} in {elapsed_ms} ms",
        "status": status,
        "elapsedMs": elapsed_ms,
        "url": shown(url),
        "method": payload.method,
    }
