"""The command line: flag, then CNR_OCI_<NAME>, then default; and a real `serve`."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from cnr_oci import cli
from cnr_oci.embedded import free_port
from cnr_oci.settings import Settings
from tests.conftest import TEST_SECRET, require_binary


def settings(argv, env=None):
    return cli.settings_from(cli.build_parser().parse_args(["serve", *argv]), env or {})


def test_defaults():
    assert settings([]) == Settings()
    s = Settings()
    assert (s.host, s.port, s.data_dir, s.max_body_size, s.upstream) == ("127.0.0.1", 5000, "./data", 64 << 20, None)


def test_flag_beats_env_beats_default():
    env = {"CNR_OCI_PORT": "6000", "CNR_OCI_HOST": "0.0.0.0", "CNR_OCI_UPSTREAM": "https://r.example"}
    s = settings(["--port", "7000"], env)
    assert s.port == 7000 and s.host == "0.0.0.0" and s.upstream == "https://r.example"


@pytest.mark.parametrize("flag,field,value,expected", [
    ("--ca-file", "ca_file", "/x/ca.pem", "/x/ca.pem"),
    ("--repository-prefix", "repository_prefix", "apps", "apps"),
    ("--data-dir", "data_dir", "/tmp/d", "/tmp/d"),
    ("--max-body-size", "max_body_size", "1MiB", 1 << 20),
    ("--log-level", "log_level", "debug", "debug"),
])
def test_every_flag_has_an_env_variable(flag, field, value, expected):
    assert getattr(settings([flag, value]), field) == expected
    assert getattr(settings([], {cli.env_name(flag): value}), field) == expected


@pytest.mark.parametrize("text,size", [("123", 123), ("64MiB", 64 << 20), ("64M", 64 << 20), ("512k", 512 << 10)])
def test_sizes(text, size):
    assert cli.parse_size(text) == size


@pytest.mark.parametrize("argv", [
    ["--upstream", "ftp://x"], ["--port", "abc"], ["--max-body-size", "lots"], ["--port", "70000"],
    ["--port", "0"], ["--max-concurrent-pushes", "0"], ["--max-concurrent-pushes", "-1"],
    ["--max-connections", "0"], ["--max-body-size", "0"], ["--log-level", "verbose"], ["--token-ttl", "0"],
    ["--upstream-timeout", "-1"], ["--cache-ttl", "-3"], ["--header-timeout", "0"],
])
def test_bad_values_exit_with_a_message(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        settings(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("cnr-oci: ") and "Traceback" not in err


@pytest.mark.parametrize("extra, message", [
    (["--tls-key", "k.pem"], "--tls-cert and --tls-key go together"),
    (["--tls-cert", "/nonexistent.pem", "--tls-key", "/nonexistent.key"], "--tls-cert / --tls-key"),
])
def test_bad_tls_files_exit_with_a_message(tmp_path, extra, message):
    proc = subprocess.run([sys.executable, "-m", "cnr_oci", "serve", "--upstream", "http://127.0.0.1:9",
                           "--token-secret", TEST_SECRET, "--data-dir", str(tmp_path), *extra],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr


def test_a_busy_port_exits_with_a_message(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = subprocess.run([sys.executable, "-m", "cnr_oci", "serve", "--upstream", "http://127.0.0.1:9",
                               "--port", str(port), "--token-secret", TEST_SECRET, "--data-dir", str(tmp_path)],
                              capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and f"cannot serve on 127.0.0.1:{port}" in proc.stderr
    assert "Traceback" not in proc.stderr


def wait_http(url, proc, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read().decode()
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                return r.read()
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"{url} did not answer")


def test_serve_without_upstream_runs_an_embedded_registry_and_stops_it(tmp_path):
    require_binary("docker-registry")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "cnr_oci", "serve", "--port", str(port), "--data-dir",
                             str(tmp_path)], stderr=subprocess.PIPE)
    try:
        assert b"cnr-oci" in wait_http(f"http://127.0.0.1:{port}/cnr/version", proc)
        assert (tmp_path / "registry").is_dir()
        children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        assert children, "no docker-registry child"
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(20)
        proc.stderr.close()
    for pid in children:
        assert not os.path.exists(f"/proc/{pid}") or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()


def test_serve_with_missing_binary_says_how_to_install(tmp_path, monkeypatch):
    env = {**os.environ, "PATH": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "cnr_oci", "serve", "--port", str(free_port()),
                           "--data-dir", str(tmp_path)], capture_output=True, text=True, env=env, timeout=30)
    assert proc.returncode != 0
    assert "apt-get install -y docker-registry" in proc.stderr


def test_a_registry_that_fails_to_start_exits_2_with_its_log(tmp_path):
    fake = tmp_path / "bin" / "docker-registry"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'panic: storage driver says no' >&2\nexit 3\n")
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{fake.parent}:{os.environ['PATH']}"}
    proc = subprocess.run([sys.executable, "-m", "cnr_oci", "serve", "--port", str(free_port()),
                           "--data-dir", str(tmp_path / "data")], capture_output=True, text=True, env=env, timeout=30)
    assert proc.returncode == 2, proc.stderr
    assert "exited with code 3" in proc.stderr and "storage driver says no" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_serve_with_tls_on_the_listener(tmp_path, registry):
    import ssl

    from tests.certs import self_signed

    cert, key, _, _ = self_signed(tmp_path / "certs", "listener")
    port = free_port()
    env = {**os.environ, "CNR_OCI_TOKEN_SECRET": TEST_SECRET}
    proc = subprocess.Popen([sys.executable, "-m", "cnr_oci", "serve", "--port", str(port), "--upstream", registry.url,
                             "--tls-cert", str(cert), "--tls-key", str(key)], stderr=subprocess.PIPE, env=env)
    try:
        ctx = ssl.create_default_context(cafile=str(cert))
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, proc.stderr.read().decode()
            try:
                with urllib.request.urlopen(f"https://127.0.0.1:{port}/cnr/version", timeout=1, context=ctx) as r:
                    assert b"cnr-oci" in r.read()
                    break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(20)
        proc.stderr.close()


def test_switches_take_true_from_the_environment():
    s = settings([], {"CNR_OCI_ANONYMOUS_READ": "true", "CNR_OCI_CORS_ORIGIN": "https://a, https://b"})
    assert s.anonymous_read is True and s.service_write is False and s.cors_origins == ("https://a", "https://b")
    assert settings(["--service-write"]).service_write is True
