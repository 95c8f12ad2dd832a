"""Offline by construction: the environment every run starts with, and a network guard.

Hugging Face libraries read their offline switches once, when they are first imported, so
`enforce_offline()` must run before any of them is imported (`trainer.cli.main` calls it first
thing). If one was imported earlier anyway (a test process, a notebook), its already-read
constants are patched too, so the switch still holds.

The environment switches stop the libraries from *trying*; the network guard makes sure that
anything that tries regardless fails at once. It patches the socket layer so a connection to any
non-loopback address raises `NetworkBlocked` naming the target and the code that asked. It is
deliberately not an `OSError`: HTTP clients turn socket `OSError`s into retryable connection
errors and back off for seconds; a `NetworkBlocked` passes straight through them. Loopback and
Unix sockets stay allowed (torch.distributed's gloo backend rendezvous on localhost).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import sys
import threading
from typing import Any, Iterator
from urllib.parse import urlsplit

from mirror import api  # its functions load on first use: importing it imports no Hugging Face library
from trainer.errors import NetworkBlocked

# Every variable the libraries we load consult before reaching for the network or a tracker.
OFFLINE_ENV: dict[str, str] = {
    "HF_HUB_OFFLINE": "1",  # huggingface_hub (and transformers, which asks huggingface_hub)
    "TRANSFORMERS_OFFLINE": "1",  # older transformers read their own switch
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1",  # never send a stored token anywhere
    "HF_HUB_DISABLE_UPDATE_CHECK": "1",
    "DISABLE_TELEMETRY": "1",
    "DO_NOT_TRACK": "1",
    "WANDB_DISABLED": "true",
    "WANDB_MODE": "disabled",
    "COMET_MODE": "disabled",
    "DISABLE_MLFLOW_INTEGRATION": "TRUE",
    "CLEARML_OFF": "1",
}

# Constants huggingface_hub computed from the environment at import time.
_HUB_CONSTANTS = {"HF_HUB_OFFLINE": True, "HF_HUB_DISABLE_TELEMETRY": True, "HF_HUB_DISABLE_IMPLICIT_TOKEN": True}


def enforce_offline() -> None:
    """Switch every Hugging Face library and experiment tracker to offline, for this process."""
    os.environ.update(OFFLINE_ENV)
    _patch_loaded_modules()


def _patch_loaded_modules() -> None:
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        for name, value in _HUB_CONSTANTS.items():
            setattr(constants, name, value)
    ds_config = sys.modules.get("datasets.config")
    if ds_config is not None and hasattr(ds_config, "HF_DATASETS_OFFLINE"):
        ds_config.HF_DATASETS_OFFLINE = True


@contextlib.contextmanager
def offline_env() -> Iterator[None]:
    """`enforce_offline()` for the length of a block, then everything put back (tests, embedding)."""
    saved_env = {k: os.environ.get(k) for k in OFFLINE_ENV}
    constants = sys.modules.get("huggingface_hub.constants")
    saved_consts = {k: getattr(constants, k) for k in _HUB_CONSTANTS if hasattr(constants, k)} if constants else {}
    enforce_offline()
    try:
        yield
    finally:
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        constants = sys.modules.get("huggingface_hub.constants")
        if constants is not None:
            # imported inside the block, it read our switches: recompute them from the restored env
            for k, v in (saved_consts or _hub_constants_from_env()).items():
                setattr(constants, k, v)


def _hub_constants_from_env() -> dict[str, bool]:
    """What huggingface_hub.constants would hold if imported now: its own module, run again."""
    fresh = api.hub_constants()
    return {k: getattr(fresh, k) for k in _HUB_CONSTANTS if hasattr(fresh, k)}


def tracker_env(report_to: tuple[str, ...]) -> None:
    """Re-enable, in offline mode, the trackers a config asks for (they write locally only)."""
    if "wandb" in report_to:
        os.environ.pop("WANDB_DISABLED", None)
        os.environ["WANDB_MODE"] = "offline"
    if "comet_ml" in report_to:
        os.environ["COMET_MODE"] = "offline"


# --- network guard -------------------------------------------------------------------------------

# Frames from these modules are plumbing; the caller we name is the first frame outside them.
_PLUMBING = (
    "socket", "ssl", "selectors", "asyncio", "http.client", "urllib.request", "urllib3", "requests",
    "httpx", "httpcore", "anyio", "aiohttp", "trainer.offline", "contextlib", "threading",
)

_ORIGINAL: dict[str, Any] = {}
_lock = threading.Lock()
_depth = 0
# A site mirror ($HF_ENDPOINT) the guard lets through while a model is fetched from it: exactly
# these (host, port) pairs, and the addresses those host names resolved to, nothing else.
_ALLOWED_NAMES: set[tuple[str, int]] = set()
_ALLOWED_ADDRS: set[tuple[str, int]] = set()


def _is_local_host(host: Any) -> bool:
    if host is None or host == "":
        return True  # getaddrinfo(None, port) is for binding, not for reaching anyone
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    host = str(host).strip("[]").split("%", 1)[0]
    if host.lower() in ("localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"):
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False  # a name other than localhost: resolving it would already leave the machine
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback or ip.is_unspecified


def _is_numeric(host: Any) -> bool:
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    try:
        ipaddress.ip_address(str(host).strip("[]").split("%", 1)[0])
        return True
    except ValueError:
        return False


def _caller() -> str:
    frame = sys._getframe(2)
    while frame is not None:
        module = frame.f_globals.get("__name__", "")
        if not any(module == p or module.startswith(p + ".") for p in _PLUMBING):
            return f"{module}.{frame.f_code.co_name} ({frame.f_code.co_filename}:{frame.f_lineno})"
        frame = frame.f_back
    return "unknown code"


def _target(address: Any) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        host = host.decode() if isinstance(host, bytes) else host
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return repr(address)


def _host_port(host: Any, port: Any) -> tuple[str, int] | None:
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    try:
        return str(host).strip("[]").split("%", 1)[0].lower(), int(port)
    except (TypeError, ValueError):
        return None


def _allowed(address: Any) -> bool:
    """Whether `address` is the allowed site mirror (by name or by an address its name gave)."""
    if not (isinstance(address, tuple) and len(address) >= 2):
        return False
    hp = _host_port(address[0], address[1])
    return hp is not None and (hp in _ALLOWED_ADDRS or hp in _ALLOWED_NAMES)


def _check_address(sock: socket.socket, address: Any) -> None:
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return  # AF_UNIX, netlink...: never leave the machine
    host = address[0] if isinstance(address, tuple) and address else address
    if not _is_local_host(host) and not _allowed(address):
        raise NetworkBlocked(_target(address), caller=_caller())


def _guarded_connect(self: socket.socket, address: Any) -> None:
    _check_address(self, address)
    return _ORIGINAL["connect"](self, address)


def _guarded_connect_ex(self: socket.socket, address: Any) -> int:
    _check_address(self, address)
    return _ORIGINAL["connect_ex"](self, address)


def _guarded_sendto(self: socket.socket, data: Any, *args: Any) -> int:
    address = args[-1] if args else None
    if address is not None:
        _check_address(self, address)
    return _ORIGINAL["sendto"](self, data, *args)


def _guarded_create_connection(address: Any, *args: Any, **kwargs: Any) -> socket.socket:
    host = address[0] if isinstance(address, tuple) and address else address
    if not _is_local_host(host) and not _allowed(address):
        raise NetworkBlocked(_target(address), caller=_caller())
    return _ORIGINAL["create_connection"](address, *args, **kwargs)


def _guarded_getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
    # A numeric address needs no DNS; a name does, and the DNS query itself leaves the machine.
    hp = _host_port(host, port)
    if hp is not None and hp in _ALLOWED_NAMES:  # the site mirror's name: the addresses it gives are allowed too
        infos = _ORIGINAL["getaddrinfo"](host, port, *args, **kwargs)
        for info in infos:
            if (ahp := _host_port(info[4][0], info[4][1])) is not None:
                _ALLOWED_ADDRS.add(ahp)
        return infos
    if not (_is_local_host(host) or _is_numeric(host)):
        raise NetworkBlocked(_target((host, port)), caller=_caller())
    return _ORIGINAL["getaddrinfo"](host, port, *args, **kwargs)


def _guarded_gethostbyname(host: Any) -> str:
    if not (_is_local_host(host) or _is_numeric(host)):
        raise NetworkBlocked(str(host), caller=_caller())
    return _ORIGINAL["gethostbyname"](host)


def _guarded_gethostbyname_ex(host: Any) -> Any:
    if not (_is_local_host(host) or _is_numeric(host)):
        raise NetworkBlocked(str(host), caller=_caller())
    return _ORIGINAL["gethostbyname_ex"](host)


_PATCHES: tuple[tuple[Any, str, Any], ...] = (
    (socket.socket, "connect", _guarded_connect),
    (socket.socket, "connect_ex", _guarded_connect_ex),
    (socket.socket, "sendto", _guarded_sendto),
    (socket, "create_connection", _guarded_create_connection),
    (socket, "getaddrinfo", _guarded_getaddrinfo),
    (socket, "gethostbyname", _guarded_gethostbyname),
    (socket, "gethostbyname_ex", _guarded_gethostbyname_ex),
)


def install_network_guard() -> None:
    """Block non-loopback connections in this process until `remove_network_guard()`. Nests."""
    global _depth
    with _lock:
        if _depth == 0:
            for owner, name, guarded in _PATCHES:
                _ORIGINAL[name] = getattr(owner, name)
                setattr(owner, name, guarded)
        _depth += 1


def remove_network_guard() -> None:
    global _depth
    with _lock:
        if _depth == 0:
            return
        _depth -= 1
        if _depth == 0:
            for owner, name, _ in _PATCHES:
                setattr(owner, name, _ORIGINAL.pop(name))


def guard_active() -> bool:
    return _depth > 0


@contextlib.contextmanager
def network_guard() -> Iterator[None]:
    """`with network_guard(): ...`: nothing inside may reach beyond this machine."""
    install_network_guard()
    try:
        yield
    finally:
        remove_network_guard()


@contextlib.contextmanager
def allow_endpoint(url: str) -> Iterator[None]:
    """Inside `network_guard()`: also let through connections to exactly this http(s) URL's
    host:port (a site mirror named by $HF_ENDPOINT), for the length of the block."""
    split = urlsplit(url)
    port = split.port or (443 if split.scheme == "https" else 80)
    hp = _host_port(split.hostname or "", port)
    with _lock:
        fresh = hp not in _ALLOWED_NAMES
        _ALLOWED_NAMES.add(hp)
    try:
        yield
    finally:
        with _lock:
            if fresh:
                _ALLOWED_NAMES.discard(hp)
                _ALLOWED_ADDRS.clear()


@contextlib.contextmanager
def hub_online() -> Iterator[None]:
    """huggingface_hub allowed to make requests for the length of the block (the trainer is
    otherwise offline): used only together with `network_guard()` and `allow_endpoint()`."""
    from huggingface_hub import constants  # deferred: a Hugging Face import waits for offline (and takes seconds)

    saved_env, saved = os.environ.get("HF_HUB_OFFLINE"), constants.HF_HUB_OFFLINE
    os.environ["HF_HUB_OFFLINE"] = "0"
    constants.HF_HUB_OFFLINE = False
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved
        if saved_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = saved_env
