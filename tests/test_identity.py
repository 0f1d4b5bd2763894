"""Who may call: TLS (--tls-cert/--tls-key, mutual TLS, rotation by SIGHUP) and named bearer tokens.

The certificates come from a test CA made here with `cryptography` (the library the bundle's TLS
stack uses); the clients are fastmcp's Client and httpx verifying against that CA, and openssl's
s_client where openssl is installed.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import re
import shutil
import signal
import ssl
import subprocess
import threading
from pathlib import Path

import httpx
import pytest
from helpers import SERVERS, error_line, run_cli, serving, usage_error, wait_for

PRODUCTION = "production_server.py"
ALICE, BOB, CAROL = "alice-token-0123456789abcdef", "bob-token-0123456789abcdef", "carol-token-0123456789abcd"


# -- a test CA --------------------------------------------------------------------------------


def _name(common: str):
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _issue(subject: str, key, issuer_name, issuer_key, ca: bool = False, server: bool = False):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(issuer_name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=2))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict:
    """A CA, two server certificates it signed (for rotation), a client certificate, an encrypted key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    folder = tmp_path_factory.mktemp("pki")
    pem = serialization.Encoding.PEM

    def write(name: str, data: bytes, mode: int = 0o600) -> Path:
        (folder / name).write_bytes(data)
        (folder / name).chmod(mode)
        return folder / name

    def key_pem(key, password: bytes | None = None) -> bytes:
        encryption = (serialization.BestAvailableEncryption(password) if password
                      else serialization.NoEncryption())
        return key.private_bytes(pem, serialization.PrivateFormat.PKCS8, encryption)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _issue("mcprun test CA", ca_key, _name("mcprun test CA"), ca_key, ca=True)
    files = {"ca": write("ca.pem", ca.public_bytes(pem), 0o644)}
    for label in ("server", "rotated"):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _issue("localhost", key, ca.subject, ca_key, server=True)
        files[label] = (write(f"{label}.pem", cert.public_bytes(pem), 0o644), write(f"{label}-key.pem", key_pem(key)))
        files[f"{label}-serial"] = cert.serial_number
    client_key = ec.generate_private_key(ec.SECP256R1())
    files["client"] = (write("client.pem", _issue("ops-client", client_key, ca.subject, ca_key).public_bytes(pem)),
                       write("client-key.pem", key_pem(client_key)))
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    files["encrypted"] = (write("rsa.pem", _issue("localhost", rsa_key, ca.subject, ca_key, server=True)
                                .public_bytes(pem), 0o644),
                          write("rsa-key.pem", key_pem(rsa_key, b"s3cret")))
    files["password"] = write("password", b"s3cret\n")
    files["wrong-password"] = write("wrong-password", b"nope\n")
    return files


def tls_args(pki: dict, which: str = "server") -> list[str]:
    cert, key = pki[which]
    return ["--tls-cert", str(cert), "--tls-key", str(key)]


def served_serial(url: str, ca: Path, client: tuple | None = None) -> int:
    """Open a new TLS connection to the server; return its certificate's serial number."""
    host, port = url.split("//")[1].split("/")[0].rsplit(":", 1)
    context = ssl.create_default_context(cafile=str(ca))
    if client:
        context.load_cert_chain(*map(str, client))
    import socket

    with socket.create_connection((host, int(port)), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname=host) as tls:
        from cryptography import x509

        return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True)).serial_number


def ssl_context(pki: dict, client: bool = False) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki["ca"]))
    if client:
        context.load_cert_chain(*map(str, pki["client"]))
    return context


async def call(url: str, ca: Path, text: str, token: str | None = None) -> str:
    from fastmcp import Client
    from fastmcp.client.transports import SSETransport, StreamableHttpTransport

    kind = SSETransport if url.endswith("/sse") else StreamableHttpTransport
    transport = kind(url, auth=token, verify=ssl.create_default_context(cafile=str(ca)))
    async with Client(transport) as client:
        result = await client.call_tool("echo", {"text": text}, raise_on_error=False)
    return result.content[0].text


# -- TLS --------------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["http", "sse"])
def test_https_with_a_verified_certificate(token, pki, transport):
    with serving(token, PRODUCTION, *tls_args(pki), transport=transport, cwd=SERVERS) as server:
        assert server.url.startswith("https://127.0.0.1:")
        assert asyncio.run(asyncio.wait_for(call(server.url, pki["ca"], "over tls"), 60)) == "over tls#0"
        root = server.url.rsplit("/", 1)[0]
        assert httpx.get(f"{root}/healthz", verify=ssl_context(pki), timeout=10).json() == {"status": "ok"}
        with pytest.raises(httpx.ConnectError):  # a client that does not trust the CA
            httpx.get(f"{root}/healthz", timeout=10)
        with pytest.raises(httpx.RemoteProtocolError):  # plain http to the TLS port
            httpx.get(root.replace("https://", "http://") + "/healthz", timeout=10)
    assert "warning" not in server.stderr


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed (.ci/run installs it)")
def test_openssl_s_client_sees_the_chain_and_http_1_1(token, pki):
    with serving(token, PRODUCTION, *tls_args(pki), cwd=SERVERS) as server:
        port = server.url.split(":")[2].split("/")[0]
        result = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-CAfile", str(pki["ca"]),
                                 "-alpn", "http/1.1", "-verify_return_error"],
                                input="", capture_output=True, text=True, timeout=30)
    said = result.stdout + result.stderr
    assert "Verify return code: 0 (ok)" in said, said
    assert re.search(r"New, TLSv1\.[23], Cipher", said), said
    assert "ALPN protocol: http/1.1" in said, said


def test_the_mcp_inspector_cli_calls_over_https_trusting_the_ca_by_node_extra_ca_certs(token, pki, tmp_path):
    import os

    from node import inspector_cli

    command, folder = inspector_cli()
    (tmp_path / "tokens").write_text(f"inspector {ALICE}\n")
    with serving(token, PRODUCTION, *tls_args(pki), "--auth-token-file", str(tmp_path / "tokens"),
                 cwd=SERVERS) as server:
        def inspector(*args: str, **env: str) -> subprocess.CompletedProcess:
            return subprocess.run([*command, "--cli", server.url, "--transport", "http", "--header",
                                   f"Authorization: Bearer {ALICE}", *args], capture_output=True, text=True,
                                  timeout=60, cwd=folder, stdin=subprocess.DEVNULL,
                                  env={**os.environ, "NO_COLOR": "1", **env})

        called = inspector("--method", "tools/call", "--tool-name", "echo", "--tool-arg", "text=inspected",
                           NODE_EXTRA_CA_CERTS=str(pki["ca"]))
        untrusted = inspector("--method", "tools/list")
    assert called.returncode == 0, called.stdout + called.stderr
    result = json.loads(called.stdout[called.stdout.index("{"):])
    assert result["content"] == [{"type": "text", "text": "inspected#0"}] and result["isError"] is False, result
    assert untrusted.returncode != 0 and "fetch failed" in untrusted.stdout + untrusted.stderr, untrusted
    assert " caller=inspector " in server.stderr


def test_mutual_tls_accepts_a_client_of_the_ca_and_refuses_others(token, pki):
    with serving(token, PRODUCTION, *tls_args(pki), "--tls-client-ca", str(pki["ca"]), cwd=SERVERS) as server:
        root = server.url.rsplit("/", 1)[0]
        with_cert = httpx.get(f"{root}/healthz", verify=ssl_context(pki, client=True), timeout=10)
        assert with_cert.json() == {"status": "ok"}
        with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):
            httpx.get(f"{root}/healthz", verify=ssl_context(pki), timeout=10)
        assert served_serial(server.url, pki["ca"], pki["client"]) == pki["server-serial"]
        httpx.post(server.url, json={"jsonrpc": "2.0", "id": 1, "method": "ping"}, timeout=10,
                   headers={"accept": "application/json, text/event-stream", "content-type": "application/json"},
                   verify=ssl_context(pki, client=True))
        line = wait_for(lambda: next((line for line in server.lines if "rpc=ping" in line), None), what="the access line")
    assert " caller=ops-client " in line, line  # the client certificate's subject is the caller


def test_sighup_rotates_the_certificate_during_a_stream_of_calls(token, pki, tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    for source, copy in zip(pki["server"], (cert, key)):
        shutil.copy(source, copy)
    key.chmod(0o600)
    with serving(token, PRODUCTION, "--tls-cert", str(cert), "--tls-key", str(key), cwd=SERVERS) as server:
        assert served_serial(server.url, pki["ca"]) == pki["server-serial"]
        results, running = [], threading.Event()
        running.set()

        async def calls():
            from fastmcp import Client
            from fastmcp.client.transports import StreamableHttpTransport

            async with Client(StreamableHttpTransport(server.url, verify=ssl_context(pki))) as client:
                while running.is_set() and len(results) < 2000:
                    result = await client.call_tool("echo", {"text": "r"}, raise_on_error=False)
                    results.append(result.content[0].text)

        thread = threading.Thread(target=lambda: asyncio.run(asyncio.wait_for(calls(), 120)), daemon=True)
        thread.start()
        wait_for(lambda: len(results) > 20, what="calls to flow")
        for source, copy in zip(pki["rotated"], (cert, key)):
            shutil.copy(source, copy)
        server.process.send_signal(signal.SIGHUP)
        wait_for(lambda: any("SIGHUP: reloaded" in line for line in server.lines), what="the reload")
        before = len(results)
        wait_for(lambda: len(results) > before + 20, what="calls after the reload")
        running.clear()
        thread.join(60)
        assert served_serial(server.url, pki["ca"]) == pki["rotated-serial"]  # new connections: the new one
        key.write_text("not a key\n")  # a bad reload keeps the certificate served
        server.process.send_signal(signal.SIGHUP)
        wait_for(lambda: any("mcprun: error: SIGHUP:" in line for line in server.lines), what="the refusal")
        assert served_serial(server.url, pki["ca"]) == pki["rotated-serial"]
    assert results and all(text.startswith("r#") for text in results), [t for t in results if not t.startswith("r#")]
    assert server.stderr.count(f"mcprun: SIGHUP: reloaded the certificate {cert}") == 1
    refusal = next(line for line in server.lines if "mcprun: error: SIGHUP:" in line).strip()
    assert refusal == (f"mcprun: error: SIGHUP: --tls-cert {cert} and --tls-key {key} must be a PEM certificate "
                       "and its PEM private key; still serving with what was loaded before")
    assert server.process.returncode == 0


def test_workers_serve_tls_and_sighup_brings_the_new_certificate(token, pki, tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    for source, copy in zip(pki["server"], (cert, key)):
        shutil.copy(source, copy)
    with serving(token, PRODUCTION, "--tls-cert", str(cert), "--tls-key", str(key), "--stateless", "--workers", "2",
                 cwd=SERVERS) as server:
        assert server.url.startswith("https://")
        assert asyncio.run(asyncio.wait_for(call(server.url, pki["ca"], "w"), 60)).startswith("w#")
        for source, copy in zip(pki["rotated"], (cert, key)):
            shutil.copy(source, copy)
        server.process.send_signal(signal.SIGHUP)
        wait_for(lambda: any("workers replaced" in line for line in server.lines), what="the workers' replacement")
        # a retired worker may take a connection or two from the shared socket before it stops listening
        wait_for(lambda: served_serial(server.url, pki["ca"]) == pki["rotated-serial"], timeout=30,
                 what="new connections to get the new certificate")
        assert server.stop() == 0, server.stderr


def test_an_encrypted_key_is_served_with_its_password_file(token, pki):
    cert, key = pki["encrypted"]
    with serving(token, PRODUCTION, "--tls-cert", str(cert), "--tls-key", str(key), "--tls-key-password-file",
                 str(pki["password"]), cwd=SERVERS) as server:
        root = server.url.rsplit("/", 1)[0]
        assert httpx.get(f"{root}/healthz", verify=ssl_context(pki), timeout=10).status_code == 200


def test_a_key_others_can_read_gets_one_warning(token, pki, tmp_path):
    key = tmp_path / "key.pem"
    shutil.copy(pki["server"][1], key)
    key.chmod(0o644)
    with serving(token, PRODUCTION, "--tls-cert", str(pki["server"][0]), "--tls-key", str(key),
                 cwd=SERVERS) as server:
        pass
    warnings = [line.strip() for line in server.lines if "warning" in line]
    assert warnings == [f"mcprun: warning: --tls-key {key} can be read by other users (mode 644): chmod 600 {key}"]


TLS_ERRORS = {
    "encrypted key, no password": (["encrypted"], [], "--tls-key RSA_KEY is encrypted: give its password with "
                                                     "--tls-key-password-file FILE"),
    "wrong password": (["encrypted"], ["--tls-key-password-file", "WRONG"],
                       "--tls-key RSA_KEY: wrong password (--tls-key-password-file)"),
    "key of another certificate": (["server-cert", "rotated-key"], [],
                                   "--tls-key ROTATED_KEY is not the key of --tls-cert SERVER_CERT"),
    "key of another type": (["server-cert", "rsa-key"], ["--tls-key-password-file", "PASSWORD"],
                            "--tls-key RSA_KEY is not the key of --tls-cert SERVER_CERT"),
    "no such certificate": (["missing-cert", "server-key"], [],
                            "--tls-cert /nonexistent/cert.pem: No such file or directory"),
    "a key as the certificate": (["server-key", "server-key"], [],
                                 "--tls-cert SERVER_KEY and --tls-key SERVER_KEY must be a PEM certificate and its "
                                 "PEM private key"),
    "client CA missing": (["server"], ["--tls-client-ca", "/nonexistent/ca.pem"],
                          "--tls-client-ca /nonexistent/ca.pem: No such file or directory"),
}


@pytest.mark.parametrize("case", TLS_ERRORS, ids=list(TLS_ERRORS))
def test_tls_errors_are_one_line(token, pki, case):
    files, extra, expected = TLS_ERRORS[case]
    names = {"SERVER_CERT": str(pki["server"][0]), "SERVER_KEY": str(pki["server"][1]),
             "ROTATED_KEY": str(pki["rotated"][1]), "RSA_KEY": str(pki["encrypted"][1]),
             "WRONG": str(pki["wrong-password"]), "PASSWORD": str(pki["password"])}
    paths = {"encrypted": list(map(str, pki["encrypted"])), "server": list(map(str, pki["server"])),
             "server-cert": [names["SERVER_CERT"]], "server-key": [names["SERVER_KEY"]],
             "rotated-key": [names["ROTATED_KEY"]], "rsa-key": [names["RSA_KEY"]],
             "missing-cert": ["/nonexistent/cert.pem"]}
    chosen = [path for label in files for path in paths[label]]
    args = ["--tls-cert", chosen[0], "--tls-key", chosen[1], *[names.get(arg, arg) for arg in extra]]
    for name, value in names.items():
        expected = expected.replace(name, value)
    result = run_cli(token, PRODUCTION, "-t", "http", "-p", "0", *args, cwd=SERVERS, input="")
    assert error_line(result, 2) == f"mcprun: error: {expected}"


@pytest.mark.parametrize("args, expected", [
    (["--tls-key", "k.pem"], "--tls-key needs both --tls-cert FILE and --tls-key FILE"),
    (["--tls-cert", "c.pem", "--tls-client-ca", "ca.pem"], "--tls-cert needs both --tls-cert FILE and --tls-key FILE"),
    (["--tls-cert", "c.pem", "--tls-key", "k.pem", "-t", "stdio"],
     "--tls-cert needs --transport http or sse: stdio has no TLS"),
])
def test_tls_options_that_do_not_go_together(token, args, expected):
    result = run_cli(token, PRODUCTION, "-t", "http", *args, cwd=SERVERS, input="")
    assert error_line(result, 2) == f"mcprun: error: {expected}"


# -- named tokens -------------------------------------------------------------------------------


def test_named_tokens_name_the_caller_and_sighup_reads_the_file_again(token, tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text(f"# who may call\nalice {ALICE}\n{BOB}\n")
    with serving(token, PRODUCTION, "--auth-token-file", str(tokens), cwd=SERVERS) as server:
        def answered(secret: str) -> int:
            return httpx.post(server.url, json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
                              headers={"accept": "application/json, text/event-stream",
                                       "content-type": "application/json", "authorization": f"Bearer {secret}"},
                              timeout=10).status_code

        assert answered(ALICE) != 401 and answered(BOB) != 401 and answered(CAROL) == 401
        wait_for(lambda: sum("rpc=ping" in line for line in server.lines) >= 2, what="two access lines")
        callers = [re.search(r" caller=(\S+)", line)[1] for line in server.lines if "rpc=ping" in line]
        assert callers == ["alice", "token-3"]
        tokens.write_text(f"carol {CAROL}\nbob {BOB}\n")
        server.process.send_signal(signal.SIGHUP)
        wait_for(lambda: any("SIGHUP: reloaded" in line for line in server.lines), what="the reload")
        assert answered(ALICE) == 401 and answered(CAROL) != 401 and answered(BOB) != 401
        tokens.write_text("carol one two\n")
        server.process.send_signal(signal.SIGHUP)
        wait_for(lambda: any("mcprun: error: SIGHUP" in line for line in server.lines), what="the refusal")
        assert answered(CAROL) != 401  # the tokens loaded before still hold
    lines = [line.strip() for line in server.lines if "SIGHUP" in line]
    assert lines == [f"mcprun: SIGHUP: reloaded 2 tokens from {tokens}",
                     f"mcprun: error: SIGHUP: --auth-token-file {tokens}, line 1: expected TOKEN or NAME TOKEN; "
                     "still serving with what was loaded before"]
    for secret in (ALICE, BOB, CAROL):
        assert secret not in server.stderr


@pytest.mark.parametrize("content, expected", [
    ("a b c\n", "--auth-token-file TOKENS, line 1: expected TOKEN or NAME TOKEN"),
    (f"ops {ALICE}\nops {BOB}\n", "--auth-token-file TOKENS, line 2: the name appears twice; give each caller its own"),
    (f"{ALICE}\nother {ALICE}\n", "--auth-token-file TOKENS, line 2: the token appears twice; give each caller its own"),
    (f"a/b {ALICE}\n", "--auth-token-file TOKENS, line 1: a name may hold only letters, digits and ._@:- (64 at most)"),
])
def test_bad_token_files_are_one_line(token, tmp_path, content, expected):
    tokens = tmp_path / "tokens"
    tokens.write_text(content)
    result = run_cli(token, PRODUCTION, "-t", "http", "-p", "0", "--auth-token-file", str(tokens), cwd=SERVERS,
                     input="")
    assert error_line(result, 2) == f"mcprun: error: {expected.replace('TOKENS', str(tokens))}"


# -- rate limits ------------------------------------------------------------------------------


def ping(client: httpx.Client, url: str, secret: str) -> httpx.Response:
    return client.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
                       headers={"accept": "application/json, text/event-stream", "content-type": "application/json",
                                "authorization": f"Bearer {secret}"})


def test_rate_limit_per_caller(token, tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text(f"alice {ALICE}\nbob {BOB}\n")
    with serving(token, PRODUCTION, "--stateless", "--auth-token-file", str(tokens), "--rate-limit", "3/m",
                 cwd=SERVERS) as server, httpx.Client(timeout=10) as client:
        alice = [ping(client, server.url, ALICE) for _ in range(12)]
        bob = ping(client, server.url, BOB)
    statuses = [answer.status_code for answer in alice]
    assert statuses[:3] == [200] * 3 and set(statuses[4:]) == {429}, statuses  # a burst of 3, then one per 20 s
    refused = alice[-1]
    assert 1 <= int(refused.headers["retry-after"]) <= 20
    assert refused.json() == {"jsonrpc": "2.0", "id": None, "error": {
        "code": -32000, "message": f"too many requests (--rate-limit); retry after {refused.headers['retry-after']} s"}}
    assert bob.status_code == 200  # another caller is unaffected
    assert sum(" 429 " in line and "caller=alice" in line for line in server.lines) == statuses.count(429)


def test_failed_authentications_are_throttled_while_the_right_token_gets_in(token, tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text(f"alice {ALICE}\n")
    with serving(token, PRODUCTION, "--stateless", "--auth-token-file", str(tokens), "--no-access-log",
                 cwd=SERVERS) as server, httpx.Client(timeout=10) as client:
        wrong = [ping(client, server.url, f"guess-{n:04d}-0123456789").status_code for n in range(100)]
        right = ping(client, server.url, ALICE)
        # the right token cost the address nothing: its next wrong ones are still throttled (the bucket refills
        # 10 a second, so on a busy machine the first may find a token; a run of them cannot)
        later = next((answer for answer in (ping(client, server.url, f"again-{n:02d}-0123456789") for n in range(30))
                      if answer.status_code == 429), None)
    assert wrong[:20] == [401] * 20 and 429 in wrong, wrong  # a burst of 20, then 10 a second
    assert right.status_code == 200
    assert later is not None and "retry-after" in later.headers
    assert later.json()["error"]["message"].startswith("too many failed authentications from this address; retry")
    warnings = [line.strip() for line in server.lines if "warning" in line]
    assert warnings == ["mcprun: warning: 127.0.0.1 keeps sending wrong credentials: answered 429 for a while"]


@pytest.mark.parametrize("workers", [[], ["--stateless", "--workers", "2"]], ids=["one process", "two workers"])
def test_a_short_token_gets_one_warning(token, tmp_path, workers):
    tokens = tmp_path / "tokens"
    tokens.write_text(f"ci short-token\nalice {ALICE}\n")
    with serving(token, PRODUCTION, "--auth-token-file", str(tokens), *workers, cwd=SERVERS) as server:
        pass
    assert [line.strip() for line in server.lines if "warning" in line] == [
        f"mcprun: warning: --auth-token-file {tokens}: a token of 11 characters (ci) is easy to guess; use 16 or "
        "more, e.g. from 'openssl rand -hex 32'"]


@pytest.mark.parametrize("rate", ["fast", "0/s", "10/h"])
def test_a_rate_that_is_not_one_is_refused(token, rate):
    result = run_cli(token, PRODUCTION, "-t", "http", "--rate-limit", rate, cwd=SERVERS, input="")
    assert usage_error(result) == f"mcprun: error: argument --rate-limit: {rate!r} is not a rate (e.g. 10/s or 600/m)"
