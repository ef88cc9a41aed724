"""Fetching a web page for `fetch_url`: public addresses only (unless allowlisted), every
redirect hop checked again, connections pinned to the checked addresses, and HTML reduced
to readable text. `fetch_page()` raises `FetchError` with a message meant for the model."""

from __future__ import annotations

import asyncio
import codecs
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable
from html.parser import HTMLParser
from typing import ClassVar

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from pydantic import BaseModel, ConfigDict, Field, IPvAnyNetwork
from yarl import URL

from bot.text import one_line

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolve = Callable[[str, int], Awaitable[list[str]]]
"""Gives the IP addresses of (host, port); `resolve_host` in production, a fake in tests."""


class FetchPolicy(BaseModel):
    """What `fetch_url` may reach. Public addresses only, unless allowlisted here."""

    model_config = ConfigDict(extra="forbid")

    allow_hosts: list[str] = Field(default_factory=list)
    """Host names fetched whatever they resolve to (except cloud metadata addresses)."""
    allow_networks: list[IPvAnyNetwork] = Field(default_factory=list)
    """Networks (CIDR) allowed although not public, e.g. "10.20.0.0/16" for an intranet."""
    timeout: float = Field(default=15.0, gt=0, le=120)
    max_bytes: int = Field(default=2_000_000, ge=1_000)
    max_chars: int = Field(default=20_000, ge=100)
    max_redirects: int = Field(default=5, ge=0, le=10)
    user_agent: str = "agentbot (+fetch_url)"


# ---------------------------------------------------------------- address checks (SSRF)

_METADATA = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OCI, DigitalOcean, OpenStack…
        "169.254.170.2",  # AWS ECS task credentials
        "169.254.170.23",  # AWS EKS pod identity
        "169.254.0.23",  # Tencent
        "169.254.42.42",  # Scaleway
        "100.100.100.200",  # Alibaba
        "168.63.129.16",  # Azure WireServer (a public address)
        "192.0.0.192",  # Oracle Cloud Classic
        "fd00:ec2::254",  # AWS IPv6
        "fd00:ec2::23",
        "fd20:ce::254",  # GCP IPv6
        "fd00:42::42",  # Scaleway IPv6
    )
)
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def _plain(ip: IPAddress) -> IPAddress:
    """`ip` without an IPv6 zone (fe80::1%eth0), which must not change how it is judged."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id:
        return ipaddress.IPv6Address(ip.packed)
    return ip


def _embedded_ipv4(ip: IPAddress) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses an IPv6 address may lead to (mapped, 6to4, Teredo, NAT64, compatible)."""
    if isinstance(ip, ipaddress.IPv4Address):
        return []
    found = [a for a in (ip.ipv4_mapped, ip.sixtofour) if a is not None]
    if ip.teredo is not None:
        found.extend(ip.teredo)
    if ip in _NAT64 or (int(ip) >> 32 == 0 and int(ip) > 1):
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return found


def _not_public(ip: IPAddress) -> str | None:
    """Why `ip` must not be fetched ("a loopback address"…), or None if it is public."""
    for candidate in (*_embedded_ipv4(ip), ip):  # what it leads to says most
        if candidate in _METADATA:
            return "a cloud metadata address"
        checks = (
            (candidate.is_unspecified, "an unspecified address"),
            (candidate.is_loopback, "a loopback address"),
            (candidate.is_link_local, "a link-local address"),
            (candidate.is_multicast, "a multicast address"),
            (candidate in _CGNAT, "a shared (CGNAT) address"),
            (candidate.is_reserved, "a reserved address"),
            (candidate.is_private, "a private address"),
            (not candidate.is_global, "a non-public address"),
        )
        for hit, reason in checks:
            if hit:
                return reason
    return None


def refusal(ip: IPAddress, policy: FetchPolicy, *, host_allowed: bool = False) -> str | None:
    """Why `fetch_url` must not connect to `ip` under `policy`, or None if it may."""
    ip = _plain(ip)
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    if ip in _METADATA or (mapped is not None and mapped in _METADATA):
        return "a cloud metadata address"  # never allowlisted: it hands out credentials
    if host_allowed or any(
        a in net for a in (ip, mapped) if a is not None for net in policy.allow_networks
    ):
        return None
    return _not_public(ip)


async def resolve_host(host: str, port: int) -> list[str]:
    """The addresses of `host`, in the order the system resolver gives them."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class FetchError(Exception):
    """A fetch refused or failed; the message is for the model and the activity line."""


class _PinnedResolver(AbstractResolver):
    """Lets aiohttp connect only to the addresses that were checked for each host, so a DNS
    answer that changes between the check and the connection cannot reach elsewhere."""

    def __init__(self) -> None:
        self._pins: dict[str, list[IPAddress]] = {}

    def pin(self, host: str, addresses: list[IPAddress]) -> None:
        self._pins[host] = addresses

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = [
            ResolveResult(
                hostname=host,
                host=str(ip),
                port=port,
                family=socket.AF_INET if ip.version == 4 else socket.AF_INET6,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for ip in self._pins.get(host, [])
        ]
        results = [r for r in results if family in (socket.AF_UNSPEC, r["family"])]
        if not results:
            raise OSError(f"{host} was not checked")
        return results

    async def close(self) -> None:
        return None


# ---------------------------------------------------------------- fetching

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_TEXT_TYPES = ("text/html", "text/plain", "application/json", "text/markdown")


def _parse_url(raw: str) -> URL:
    try:
        url = URL(raw.strip())
    except (TypeError, ValueError):
        raise FetchError(f"refused: {raw!r} is not a URL") from None
    if url.scheme not in ("http", "https"):
        raise FetchError("refused: only http:// and https:// URLs can be fetched")
    if not url.raw_host:
        raise FetchError("refused: the URL has no host")
    return url


def _ip_literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.split("%")[0] if ":" in host else host)
    except ValueError:
        return None


async def _admit(url: URL, policy: FetchPolicy, pins: _PinnedResolver, resolve: Resolve) -> None:
    """Check every address `url` leads to and pin them; raise `FetchError` if one is refused."""
    host = url.raw_host or ""
    literal = _ip_literal(host)
    named = literal is None
    if literal is not None:
        addresses = [literal]
    else:
        try:
            found = await resolve(host, url.port or 0)
        except OSError:
            raise FetchError(f"cannot resolve {host}") from None
        addresses = [ipaddress.ip_address(a.split("%")[0]) for a in found]
        if not addresses:
            raise FetchError(f"cannot resolve {host}")
    host_allowed = named and host.rstrip(".").lower() in {
        h.rstrip(".").lower() for h in policy.allow_hosts
    }
    for ip in addresses:
        reason = refusal(ip, policy, host_allowed=host_allowed)
        if reason is not None:
            shown = (
                f"{ip} ({', '.join(map(str, embedded))})"
                if (embedded := _embedded_ipv4(ip))
                else ip
            )
            where = f"{host} resolves to {shown}, {reason}" if named else f"{shown} is {reason}"
            raise FetchError(f"refused: {where}")
    pins.pin(host, addresses)


async def fetch_page(url: str, policy: FetchPolicy, *, resolve: Resolve | None = None) -> str:
    """Fetch `url` under `policy` and return its readable text, headed by the final URL.

    Redirects are followed by hand, each hop checked again. Raises `FetchError`.
    """
    try:
        async with asyncio.timeout(policy.timeout):
            return await _fetch(_parse_url(url), policy, resolve or resolve_host)
    except TimeoutError:
        raise FetchError(f"no answer within {policy.timeout:g} s") from None
    except aiohttp.ClientError as exc:
        raise FetchError(f"cannot fetch: {one_line(str(exc)) or type(exc).__name__}") from None


async def _fetch(url: URL, policy: FetchPolicy, resolve: Resolve) -> str:
    pins = _PinnedResolver()
    connector = aiohttp.TCPConnector(resolver=pins, use_dns_cache=False)
    headers = {
        "User-Agent": policy.user_agent,
        "Accept": "text/html,text/plain,text/markdown,application/json;q=0.9,*/*;q=0.1",
        "Accept-Encoding": "gzip, deflate",
    }
    async with aiohttp.ClientSession(connector=connector, headers=headers, trust_env=False) as s:
        for hop in range(policy.max_redirects + 1):
            try:
                await _admit(url, policy, pins, resolve)
            except FetchError as exc:
                raise FetchError(f"{exc} (redirected to {url})" if hop else str(exc)) from None
            async with s.get(url, allow_redirects=False) as response:
                location = response.headers.get("Location")
                if response.status in _REDIRECTS and location:
                    try:
                        url = _parse_url(str(url.join(URL(location))))
                    except ValueError:
                        raise FetchError(f"refused: bad redirect to {location!r}") from None
                    continue
                return await _read(response, url, policy)
    raise FetchError(f"more than {policy.max_redirects} redirects")


async def _read(response: aiohttp.ClientResponse, url: URL, policy: FetchPolicy) -> str:
    if response.status >= 400:
        raise FetchError(f"HTTP {response.status} {response.reason or ''}".rstrip())
    if "Content-Type" not in response.headers:
        raise FetchError("refused: the page has no content type")
    content_type = response.content_type.lower()
    if content_type not in _TEXT_TYPES:
        raise FetchError(
            f"refused: content type {content_type} is not text (allowed: {', '.join(_TEXT_TYPES)})"
        )
    body = bytearray()
    cut_bytes = False
    async for chunk in response.content.iter_chunked(64 * 1024):
        body += chunk
        if len(body) > policy.max_bytes:
            del body[policy.max_bytes :]
            cut_bytes = True
            break
    raw = bytes(body)
    text = raw.decode(_charset(response.charset, raw, content_type), errors="replace")
    lines = [f"URL: {url}"]
    if content_type == "text/html":
        page = PageText()
        page.feed(text)
        page.close()
        if page.title:
            lines.append(f"Title: {page.title}")
        text = page.text()
    notes = []
    if cut_bytes:
        notes.append(f"only the first {policy.max_bytes:,} bytes of the page were read")
    if len(text) > policy.max_chars:
        notes.append(f"showing the first {policy.max_chars:,} of {len(text):,} characters")
        text = text[: policy.max_chars]
    result = "\n".join(lines) + "\n\n" + text.strip()
    return result + (f"\n\n[cut: {'; '.join(notes)}]" if notes else "")


def _charset(declared: str | None, raw: bytes, content_type: str) -> str:
    candidates = [declared]
    if content_type == "text/html":
        found = re.search(rb"""<meta[^>]+charset=["']?([\w.:-]+)""", raw[:4096], re.IGNORECASE)
        candidates.append(found.group(1).decode("ascii") if found else None)
    for name in candidates:
        if name:
            try:
                return codecs.lookup(name).name
            except LookupError:
                continue
    return "utf-8"


class PageText(HTMLParser):
    """HTML reduced to readable text: no scripts or styles; headings, paragraphs, list
    items and line breaks kept as Markdown-ish lines; link text kept."""

    _SKIP = frozenset({"script", "style", "noscript", "template", "svg", "iframe", "object"})
    _BREAK = frozenset({"br", "tr", "dt", "dd", "div", "section", "article", "header"})
    _PARAGRAPH = frozenset({"p", "pre", "blockquote", "table", "ul", "ol", "dl", "main", "hr"})
    _HEADINGS: ClassVar[dict[str, int]] = {f"h{n}": n for n in range(1, 7)}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self._out: list[str] = []
        self._last = "\n"  # the last character written
        self._trail = 0  # how many newlines end the text
        self._space = False  # a space is owed before the next word
        self._skip = 0
        self._pre = 0
        self._in_title = False
        self.title = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._SKIP:
            self._skip += 1
        elif tag == "title":
            self._in_title = True
        elif tag in self._HEADINGS:
            self._newlines(2)
            self._write("#" * self._HEADINGS[tag] + " ")
        elif tag == "li":
            self._newlines(1)
            self._write("- ")
        elif tag in ("td", "th"):
            self._space = True
        elif tag in self._BREAK or tag in self._PARAGRAPH:
            self._newlines(2 if tag in self._PARAGRAPH else 1)
        if tag == "pre":
            self._pre += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in self._SKIP:
            self._skip = max(0, self._skip - 1)
        elif tag == "title":
            self._in_title = False
        elif tag in self._HEADINGS or tag in self._PARAGRAPH:
            self._newlines(2)
        elif tag in self._BREAK or tag == "li":
            self._newlines(1)
        if tag == "pre":
            self._pre = max(0, self._pre - 1)

    def handle_data(self, data: str) -> None:
        if self._skip or not data:
            return
        if self._in_title:
            self.title = one_line(self.title + " " + data)
        elif self._pre:
            self._write(data)
        else:
            words = " ".join(data.split())
            if words and (self._space or data[0].isspace()) and self._last not in " \n":
                words = " " + words
            self._space = data[-1].isspace()
            if words:
                self._write(words)

    def _write(self, text: str) -> None:
        self._out.append(text)
        body = text.rstrip("\n")
        self._trail = (0 if body else self._trail) + len(text) - len(body)
        self._last = text[-1]

    def _newlines(self, count: int) -> None:
        self._space = False
        if self._out and self._trail < count:
            self._write("\n" * (count - self._trail))

    def text(self) -> str:
        lines = (line.rstrip() for line in "".join(self._out).splitlines())
        return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
