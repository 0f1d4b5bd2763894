"""A real OAuth 2 authorization server for the JWT tests: oauth2-mock-server (npm), run by packaging/node/idp.mjs.

    with identity_provider(tmp_path) as idp:
        token = idp.token(scope="tools:call", audience="https://mcp.example/mcp")
        ...  # point mcprun at idp.url (issuer) and idp.jwks_url; send "Authorization: Bearer " + token
        idp.rotate()  # a new kid: tokens from now on need a fresh look at the JWKS

Tokens come from the server's real token endpoint (client_credentials grant, client "ci-bot"), signed
with a key that its JWKS endpoint publishes. tests/node.py installs the locked npm packages.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from node import PACKAGE, node_modules, tool

CLIENT_ID = "ci-bot"
START_TIMEOUT = 30.0  # seconds for the server to print its URL (an RSA key is generated first)
COMMAND_TIMEOUT = 30.0  # seconds for a stdin command (rotate: a key generation)
HTTP_TIMEOUT = 10.0

_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # 127.0.0.1: never through a proxy


class IdP:
    """A running oauth2-mock-server: its issuer URL, JWKS, tokens from its token endpoint, key rotation."""

    def __init__(self, process: subprocess.Popen, log: Path) -> None:
        self.process = process
        self.log = log
        self.url = ""  # the issuer ("iss" of its tokens), e.g. http://127.0.0.1:PORT
        self.jwks_url = ""
        self.token_url = ""
        self.kid = ""  # the key that signs from now on
        self.algorithm = ""
        self._lines: queue.Queue = queue.Queue()
        self._command_lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def _stderr(self) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_text(errors="replace")[-4000:]
        return ""

    def _reply(self, timeout: float, what: str) -> dict:
        """The next JSON line from the server, within timeout seconds."""
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"identity provider: no {what} in {timeout}s; stderr:\n{self._stderr()}") from None
        if line is None:
            self.process.wait(5)
            raise AssertionError(f"identity provider exited ({self.process.returncode}) before its {what}; "
                                 f"stderr:\n{self._stderr()}")
        try:
            message = json.loads(line)
        except ValueError:
            raise AssertionError(f"identity provider: {what} is not JSON: {line!r}") from None
        if "error" in message:
            raise AssertionError(f"identity provider: {message['error']}")
        return message

    def _started(self, timeout: float = START_TIMEOUT) -> None:
        ready = self._reply(timeout, "URL line")
        self.url, self.jwks_url, self.token_url = ready["url"], ready["jwks_url"], ready["token_url"]
        self.kid, self.algorithm = ready["kid"], ready["algorithm"]

    def _http(self, request: urllib.request.Request) -> dict:
        try:
            with _opener.open(request, timeout=HTTP_TIMEOUT) as response:
                return json.load(response)
        except urllib.error.HTTPError as error:
            raise AssertionError(f"identity provider: {request.get_method()} {request.full_url}: {error.code} "
                                 f"{error.read().decode(errors='replace')}") from None

    def jwks(self) -> dict:
        """GET the JWKS (public keys, each with kid and alg)."""
        return self._http(urllib.request.Request(self.jwks_url))

    def token(self, scope: str = "", audience: str | list[str] | None = None, expires_in: int | None = None,
              claims: dict | None = None) -> str:
        """An access token (a JWT) from the token endpoint, client_credentials grant, client CLIENT_ID.

        It carries iss (self.url), sub and client_id (CLIENT_ID), iat, nbf, exp (expires_in seconds
        from now, default 3600; negative: already expired), jti, scope (unless ""), aud (audience);
        claims sets or overrides any of them, e.g. {"iss": "https://other"}, and a None value removes one.
        """
        form: list[tuple[str, str]] = [("grant_type", "client_credentials"), ("client_id", CLIENT_ID)]
        if scope:
            form.append(("scope", scope))
        for audience_value in [audience] if isinstance(audience, str) else audience or []:
            form.append(("aud", audience_value))  # repeated: a list of audiences
        if expires_in is not None:
            form.append(("expires_in", str(int(expires_in))))
        if claims:
            form.append(("claims", json.dumps(claims)))
        body = urllib.parse.urlencode(form).encode()
        request = urllib.request.Request(self.token_url, data=body, method="POST",
                                         headers={"Content-Type": "application/x-www-form-urlencoded"})
        return self._http(request)["access_token"]

    def rotate(self, algorithm: str = "RS256") -> None:
        """Add a new signing key (new kid, listed by the JWKS from now on) and sign every later token with it."""
        with self._command_lock:
            try:
                self.process.stdin.write(f"rotate {algorithm}\n")
                self.process.stdin.flush()
            except (BrokenPipeError, ValueError):
                raise AssertionError(f"identity provider is gone; stderr:\n{self._stderr()}") from None
            reply = self._reply(COMMAND_TIMEOUT, "answer to rotate")
        self.kid, self.algorithm = reply["kid"], reply["algorithm"]

    def stop(self) -> None:
        """Kill the server's process group and reap it."""
        with contextlib.suppress(OSError):
            self.process.stdin.close()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(10)
        self._reader.join(5)


@contextlib.contextmanager
def identity_provider(folder: Path, algorithm: str = "RS256"):
    """Run oauth2-mock-server on a free 127.0.0.1 port signing with a new key of algorithm
    (RS256/384/512, PS256/384/512, ES256/384/512, EdDSA, Ed25519); yield the IdP. Its stderr goes
    to folder/idp.log; it is killed (process group) when the block exits, however it exits."""
    modules = node_modules()
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "idp.log"
    with open(log, "wb") as stderr:
        process = subprocess.Popen([tool("node"), str(PACKAGE / "idp.mjs"), str(modules), algorithm],
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True,
                                   cwd=folder, start_new_session=True)
    idp = IdP(process, log)
    try:
        idp._started()
        yield idp
    finally:
        idp.stop()


def decoded(token: str) -> tuple[dict, dict]:
    """The (header, claims) of a JWT, unverified: for looking at what a test was given."""
    import base64

    def part(text: str) -> dict:
        return json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))

    header, claims, _ = token.split(".")
    return part(header), part(claims)
