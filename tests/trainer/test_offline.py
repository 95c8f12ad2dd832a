"""Offline environment and the network guard: switches set before HF import, connections refused."""

from __future__ import annotations

import os
import socket
import socketserver
import subprocess
import sys
import threading
import urllib.request

import pytest

from trainer import offline
from trainer.errors import NetworkBlocked
from trainer.offline import OFFLINE_ENV, network_guard, offline_env

UNROUTABLE = "203.0.113.7"  # TEST-NET-3 (RFC 5737): never answers, so a missing guard would hang


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in OFFLINE_ENV}


def test_offline_set_before_any_hf_import_in_a_fresh_process():
    code = (
        "import sys\n"
        "import trainer.cli\n"
        "leaked = [m for m in ('huggingface_hub', 'transformers', 'sentence_transformers', 'torch') if m in sys.modules]\n"
        "assert not leaked, f'imported at module top: {leaked}'\n"
        "from trainer.offline import enforce_offline\n"
        "enforce_offline()\n"
        "import huggingface_hub.constants as c\n"
        "import transformers.utils.hub as th\n"
        "print(c.HF_HUB_OFFLINE, th.is_offline_mode(), c.HF_HUB_DISABLE_TELEMETRY)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=_clean_env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "True", "True"]


def test_cli_entry_point_goes_offline_before_the_command_runs():
    code = (
        "import sys, os\n"
        "sys.argv = ['trainer', '--version']\n"
        "from trainer.cli import main\n"
        "try:\n    main()\n"
        "except SystemExit:\n    pass\n"
        "print(os.environ['HF_HUB_OFFLINE'], os.environ['TRANSFORMERS_OFFLINE'], os.environ['WANDB_MODE'])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=_clean_env(), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-3:] == ["1", "1", "disabled"]


def test_offline_env_patches_already_imported_constants_and_restores_them(monkeypatch):
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with offline_env():
        assert c.HF_HUB_OFFLINE is True
        assert os.environ["HF_HUB_OFFLINE"] == "1"
        assert os.environ["DO_NOT_TRACK"] == "1"
    assert c.HF_HUB_OFFLINE is False
    assert "HF_HUB_OFFLINE" not in os.environ


def test_offline_env_resets_constants_of_a_hub_imported_inside_the_block():
    code = (
        "import os, sys\n"
        "from trainer.offline import offline_env\n"
        "with offline_env():\n"
        "    import huggingface_hub.constants as c\n"
        "    inside = c.HF_HUB_OFFLINE\n"
        "print(inside, c.HF_HUB_OFFLINE, 'HF_HUB_OFFLINE' in os.environ)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=_clean_env(), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "False", "False"]


def test_tracker_env_reenables_only_what_the_config_asks_for_offline(monkeypatch):
    for k in ("WANDB_DISABLED", "WANDB_MODE"):
        monkeypatch.delenv(k, raising=False)
    with offline_env():
        offline.tracker_env(())
        assert os.environ["WANDB_MODE"] == "disabled"
        offline.tracker_env(("wandb",))
        assert os.environ["WANDB_MODE"] == "offline"
        assert "WANDB_DISABLED" not in os.environ


def test_connect_to_a_remote_address_is_blocked_at_once_naming_target_and_caller():
    with network_guard():
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(5)  # without the guard this would time out, not raise NetworkBlocked
        try:
            with pytest.raises(NetworkBlocked) as info:
                s.connect((UNROUTABLE, 443))
            assert s.connect_ex.__name__ == "_guarded_connect_ex"
            with pytest.raises(NetworkBlocked):
                s.connect_ex((UNROUTABLE, 443))
        finally:
            s.close()
    msg = str(info.value)
    assert f"{UNROUTABLE}:443" in msg
    assert "test_connect_to_a_remote_address_is_blocked_at_once_naming_target_and_caller" in msg
    assert info.value.exit_code == 11  # common.exitcodes.NETWORK_BLOCKED
    assert not isinstance(info.value, OSError)  # so HTTP clients do not retry it


def test_names_are_not_even_resolved():
    with network_guard():
        with pytest.raises(NetworkBlocked, match="huggingface.co:443"):
            socket.getaddrinfo("huggingface.co", 443)
        with pytest.raises(NetworkBlocked, match="huggingface.co:443"):
            socket.create_connection(("huggingface.co", 443), timeout=5)
        with pytest.raises(NetworkBlocked):
            socket.gethostbyname("pypi.org")
        # local and numeric lookups need no DNS and stay allowed
        assert socket.getaddrinfo("localhost", 80, socket.AF_INET)[0][4][0].startswith("127.")
        assert socket.getaddrinfo("127.0.0.1", 80)[0][4][0] == "127.0.0.1"


def test_udp_sendto_remote_is_blocked():
    with network_guard():
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            with pytest.raises(NetworkBlocked, match=f"{UNROUTABLE}:53"):
                s.sendto(b"x", (UNROUTABLE, 53))
        finally:
            s.close()


def test_http_clients_surface_the_block_instead_of_retrying():
    import requests

    with network_guard():
        with pytest.raises(NetworkBlocked, match="example.com:80"):
            urllib.request.urlopen("http://example.com/", timeout=5)
        with pytest.raises(NetworkBlocked):
            requests.get(f"http://{UNROUTABLE}/", timeout=5)


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.request.sendall(self.request.recv(64).upper())


def test_loopback_and_unix_sockets_still_work(tmp_path):
    server = socketserver.TCPServer(("127.0.0.1", 0), _Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with network_guard():
            with socket.create_connection(server.server_address, timeout=5) as c:
                c.sendall(b"ping")
                assert c.recv(64) == b"PING"
            with socket.create_connection(("localhost", server.server_address[1]), timeout=5) as c:
                c.sendall(b"again")
                assert c.recv(64) == b"AGAIN"
            a, b = socket.socketpair(socket.AF_UNIX)
            with a, b:
                a.sendall(b"unix")
                assert b.recv(8) == b"unix"
    finally:
        server.shutdown()
        server.server_close()


def test_guard_nests_and_is_removed_afterwards():
    original = socket.socket.connect
    with network_guard():
        with network_guard():
            assert offline.guard_active()
        assert offline.guard_active()  # the inner exit must not lift the outer guard
        with pytest.raises(NetworkBlocked):
            socket.create_connection((UNROUTABLE, 80), timeout=5)
    assert not offline.guard_active()
    assert socket.socket.connect is original
    assert socket.getaddrinfo.__name__ == "getaddrinfo"


def _unshare_works() -> bool:
    try:
        return subprocess.run(["unshare", "-rn", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.skipif(not _unshare_works(), reason="unshare -rn (user + network namespace) is not permitted here")
def test_with_no_network_at_all_the_guard_still_answers_first():
    # In a namespace with no interfaces but lo, the guard's error comes before the kernel's.
    code = (
        "import socket\n"
        "from trainer.offline import enforce_offline, install_network_guard\n"
        "from trainer.errors import NetworkBlocked\n"
        "enforce_offline(); install_network_guard()\n"
        "try:\n    socket.create_connection(('huggingface.co', 443), timeout=5)\n"
        "except NetworkBlocked as e:\n    print('blocked', e.target)\n"
    )
    out = subprocess.run(["unshare", "-rn", sys.executable, "-c", code], env=_clean_env(), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "blocked huggingface.co:443"
