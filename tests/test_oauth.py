"""mcprun as an OAuth 2.1 resource server: access tokens from a real authorization server (npm's
oauth2-mock-server, tests/idp.py), checked against its JWKS as a file (offline) and by URL.

Clients: fastmcp's Client with the token, and httpx for the status codes and headers of each refusal.
Tokens no real server issues (alg none, HS256 signed with the public key) are made here with joserfc.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import signal
import subprocess

import httpx
import pytest
from helpers import INITIALIZE, ROOT, SERVERS, child_env, error_line, run_cli, serving, wait_for
from idp import identity_provider

PRODUCTION = "production_server.py"
RESOURCE = "https://mcp.example.org/mcp"
SCOPE = "mcp:tools"
STREAM_HEADERS = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
STATIC = "static-token-0123456789abcdef"
MCP1_PYTHON = ROOT / ".venv-mcp1" / "bin" / "python"
MCP1_CLIENT = ROOT / "tests" / "clients" / "mcp1_client.py"


@pytest.fixture(scope="module", params=os.environ.get("MCPRUN_TEST_JWT_ALGORITHMS", "RS256,ES256").split(","))
def idp(request, tmp_path_factory):
    with identity_provider(tmp_path_factory.mktemp("idp"), algorithm=request.param) as provider:
        yield provider


def jwt_args(idp, jwks: str, *extra: str) -> list[str]:
    return ["--auth-jwks", jwks, "--auth-issuer", idp.url, "--auth-resource", RESOURCE, "--auth-scope", SCOPE, *extra]


def post(url: str, token: str | None) -> httpx.Response:
    headers = {**STREAM_HEADERS, **({"authorization": f"Bearer {token}"} if token else {})}
    return httpx.post(url, json=INITIALIZE, headers=headers, timeout=10)


def b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def forged(idp, kind: str) -> str:
    """A token no authorization server should issue, with claims that would otherwise pass."""
    from joserfc import jwt
    from joserfc.jwk import OctKey

    claims = json.loads(base64.urlsafe_b64decode(idp.token(scope=SCOPE, audience=RESOURCE).split(".")[1] + "=="))
    if kind == "none":
        return f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(claims)}."
    public = json.dumps(idp.jwks()["keys"][0]).encode()  # the 'secret' an attacker has: the public key
    return jwt.encode({"alg": "HS256"}, claims, OctKey.import_key(public), algorithms=["HS256"])


def tampered(token: str) -> str:
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    return ".".join((header, b64({**claims, "scope": f"{claims.get('scope', '')} admin"}), signature))


def challenge(error: str | None = None, scope: str | None = None) -> str:
    metadata = 'resource_metadata="https://mcp.example.org/.well-known/oauth-protected-resource/mcp"'
    return "Bearer realm=\"mcp\"" + (f', error="{error}"' if error else "") + (
        f', scope="{scope}"' if scope else "") + f", {metadata}"


def test_tokens_from_the_authorization_server_checked_offline_against_its_jwks_file(token, idp, tmp_path):
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(idp.jwks()))
    tokens = tmp_path / "tokens"
    tokens.write_text(f"ops {STATIC}\n")
    with serving(token, PRODUCTION, *jwt_args(idp, str(jwks)), "--auth-token-file", str(tokens),
                 cwd=SERVERS) as server:
        good = idp.token(scope=f"{SCOPE} other", audience=RESOURCE)
        cases = {
            "valid": (good, 200, None),
            "static token beside": (STATIC, 200, None),
            "no token": (None, 401, challenge()),
            "expired": (idp.token(scope=SCOPE, audience=RESOURCE, expires_in=-300), 401, challenge("invalid_token")),
            "wrong audience": (idp.token(scope=SCOPE, audience="https://other.example/mcp"), 401,
                               challenge("invalid_token")),
            "wrong issuer": (idp.token(scope=SCOPE, audience=RESOURCE, claims={"iss": "https://evil.example"}), 401,
                             challenge("invalid_token")),
            "missing scope": (idp.token(scope="other", audience=RESOURCE), 403,
                              challenge("insufficient_scope", SCOPE)),
            "a longer scope holding the name": (idp.token(scope=f"{SCOPE}-admin", audience=RESOURCE), 403,
                                                challenge("insufficient_scope", SCOPE)),
            "scp as a string (Entra ID)": (idp.token(audience=RESOURCE, claims={"scp": f"other {SCOPE}"}), 200, None),
            "scp string without it": (idp.token(audience=RESOURCE, claims={"scp": f"{SCOPE}-admin"}), 403,
                                      challenge("insufficient_scope", SCOPE)),
            "scp as a list": (idp.token(audience=RESOURCE, claims={"scp": [SCOPE]}), 200, None),
            "tampered": (tampered(good), 401, challenge("invalid_token")),
            "alg none": (forged(idp, "none"), 401, challenge("invalid_token")),
            "HS256 with the public key": (forged(idp, "hs256"), 401, challenge("invalid_token")),
            "garbage": ("a.b.c", 401, challenge("invalid_token")),
        }
        got = {}
        for name, (credential, _, _) in cases.items():
            answer = post(server.url, credential)
            got[name] = (answer.status_code, answer.headers.get("www-authenticate"))
        assert got == {name: (status, header) for name, (_, status, header) in cases.items()}
        idp.rotate()  # a key the file does not have: refused until SIGHUP reads the new file
        rotated = idp.token(scope=SCOPE, audience=RESOURCE)
        assert post(server.url, rotated).status_code == 401
        jwks.write_text(json.dumps(idp.jwks()))
        server.process.send_signal(signal.SIGHUP)
        reloaded = f"mcprun: SIGHUP: reloaded 1 token from {tokens} and the keys from {jwks}\n"
        wait_for(lambda: reloaded in server.lines, what="the reload")
        assert post(server.url, rotated).status_code == 200
        from fastmcp import Client

        async def call():
            async with Client(server.url, auth=rotated) as client:
                return (await client.call_tool("echo", {"text": "jwt"})).content[0].text

        assert asyncio.run(asyncio.wait_for(call(), 60)) == "jwt#0"
        wait_for(lambda: any("tool=echo" in line for line in server.lines), what="the access line")
    callers = {re.search(r" caller=(\S+)", line)[1] for line in server.lines if " caller=" in line}
    assert callers == {"ci-bot", "ops"}, callers
    assert good not in server.stderr and STATIC not in server.stderr
    assert "Traceback" not in server.stderr and "Warning" not in server.stderr, server.stderr


@pytest.mark.skipif(not MCP1_PYTHON.exists(), reason="run './build test' to create .venv-mcp1")
@pytest.mark.parametrize("transport", ["http", "sse"])
def test_an_mcp1_client_calls_with_an_access_token(token, idp, transport):
    with serving(token, "fastmcp_server.py", *jwt_args(idp, idp.jwks_url), transport=transport,
                 cwd=SERVERS) as server:
        for bearer, works in ((idp.token(scope=SCOPE, audience=RESOURCE), True),
                              (idp.token(scope="other", audience=RESOURCE), False)):
            result = subprocess.run([str(MCP1_PYTHON), str(MCP1_CLIENT), transport, server.url], capture_output=True,
                                    text=True, timeout=60, env=child_env(token, MCP1_BEARER=bearer))
            assert (result.returncode == 0) is works, result.stderr
            if works:
                assert json.loads(result.stdout)["echo"] == "hi"


def test_the_jwks_url_is_fetched_again_for_a_new_key(token, idp):
    with serving(token, PRODUCTION, *jwt_args(idp, idp.jwks_url), cwd=SERVERS) as server:
        assert post(server.url, idp.token(scope=SCOPE, audience=RESOURCE)).status_code == 200
        idp.rotate()
        assert post(server.url, idp.token(scope=SCOPE, audience=RESOURCE)).status_code == 200  # fetched again
        unknown = forged_with_unknown_kid(idp)
        assert post(server.url, unknown).status_code == 401  # and not again within 30 s: still refused, no fetch


def forged_with_unknown_kid(idp) -> str:
    from joserfc import jwt
    from joserfc.jwk import RSAKey

    key = RSAKey.generate_key(2048, parameters={"kid": "not-published"})
    claims = json.loads(base64.urlsafe_b64decode(idp.token(scope=SCOPE, audience=RESOURCE).split(".")[1] + "=="))
    return jwt.encode({"alg": "RS256", "kid": "not-published"}, claims, key)


def test_protected_resource_metadata(token, idp, tmp_path):
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(idp.jwks()))
    with serving(token, PRODUCTION, *jwt_args(idp, str(jwks)), cwd=SERVERS) as server:
        root = server.url.rsplit("/", 1)[0]
        for path in ("/.well-known/oauth-protected-resource/mcp", "/.well-known/oauth-protected-resource"):
            answer = httpx.get(root + path, timeout=10)
            assert answer.status_code == 200
            assert answer.json() == {"resource": RESOURCE, "authorization_servers": [idp.url],
                                     "scopes_supported": [SCOPE], "bearer_methods_supported": ["header"]}
            assert answer.headers["access-control-allow-origin"] == "*"


@pytest.mark.parametrize("args, expected", [
    (["--auth-jwks", "jwks.json"], "--auth-jwks needs --auth-issuer URL (the issuer its tokens name)"),
    (["--auth-jwks", "jwks.json", "--auth-issuer", "https://idp.example"],
     "--auth-jwks needs --auth-resource URL (this server's URL, the audience its tokens carry)"),
    (["--auth-jwks", "jwks.json", "--auth-issuer", "idp", "--auth-resource", RESOURCE],
     "--auth-issuer 'idp' is not an http(s):// URL"),
    (["--auth-scope", "x"], "--auth-scope needs --auth-jwks FILE|URL, the keys the access tokens are signed with"),
    (["--auth-jwks", "jwks.json", "--auth-issuer", "https://idp.example", "--auth-resource", RESOURCE, "-t", "stdio"],
     "--auth-jwks needs --transport http or sse: over stdio the client is the process owner"),
    (["--auth-jwks", "/nonexistent/jwks.json", "--auth-issuer", "https://idp.example", "--auth-resource", RESOURCE],
     "--auth-jwks /nonexistent/jwks.json: No such file or directory"),
    (["--auth-jwks", "NOT_JWKS", "--auth-issuer", "https://idp.example", "--auth-resource", RESOURCE],
     "--auth-jwks NOT_JWKS: not a JWKS with a usable public key ([..])"),
])
def test_oauth_option_errors_are_one_line(token, tmp_path, args, expected):
    not_jwks = tmp_path / "not.json"
    not_jwks.write_text('{"keys": []}')
    args = [str(not_jwks) if arg == "NOT_JWKS" else arg for arg in args]
    result = run_cli(token, PRODUCTION, "-t", "http", "-p", "0", *args, cwd=SERVERS, input="")
    line = error_line(result, 2)
    pattern = re.escape(f"mcprun: error: {expected.replace('NOT_JWKS', str(not_jwks))}").replace(r"\[\.\.\]", ".+")
    assert re.fullmatch(pattern, line), line


def test_an_unreachable_jwks_url_is_one_line(token):
    result = run_cli(token, PRODUCTION, "-t", "http", "-p", "0", "--auth-jwks", "http://127.0.0.1:9/jwks",
                     "--auth-issuer", "https://idp.example", "--auth-resource", RESOURCE, cwd=SERVERS, input="")
    assert error_line(result, 1).startswith("mcprun: error: --auth-jwks http://127.0.0.1:9/jwks: cannot fetch the keys (")


def test_a_server_with_its_own_auth_refuses_auth_jwks(token, tmp_path):
    result = run_cli(token, "own_auth_server.py", "-t", "http", "-p", "0", "--auth-jwks", "x.json", "--auth-issuer",
                     "https://idp.example", "--auth-resource", RESOURCE, cwd=SERVERS, input="")
    assert error_line(result, 2) == ("mcprun: error: the server configures its own authentication: drop --auth-jwks "
                                     "(and MCPRUN_AUTH_JWKS), or remove auth from the server")


def test_scopes_choose_the_tools_and_sighup_fetches_the_jwks_url_again(token, idp, tmp_path):
    from fastmcp import Client
    from fastmcp.client.transports import StreamableHttpTransport

    (tmp_path / "policy").write_text("scope:repo.write  git_*\n*  git_status\n")

    async def tools(url: str, bearer: str) -> list:
        async with Client(StreamableHttpTransport(url, auth=bearer)) as client:
            return sorted(tool.name for tool in await client.list_tools())

    with serving(token, "git_tools.py", *jwt_args(idp, idp.jwks_url), "--policy", str(tmp_path / "policy"),
                 cwd=SERVERS) as server:
        see = lambda bearer: asyncio.run(asyncio.wait_for(tools(server.url, bearer), 60))  # noqa: E731
        assert see(idp.token(scope=SCOPE, audience=RESOURCE)) == ["git_status"]
        assert see(idp.token(scope=f"{SCOPE} repo.write", audience=RESOURCE)) == ["git_commit", "git_push",
                                                                                  "git_status"]
        idp.rotate()
        server.process.send_signal(signal.SIGHUP)
        fetched = f"mcprun: SIGHUP: fetched the keys from {idp.jwks_url}\n"
        wait_for(lambda: fetched in server.lines, what="the fetch")
        assert post(server.url, idp.token(scope=SCOPE, audience=RESOURCE)).status_code == 200
    sighup = [line for line in server.lines if "SIGHUP" in line]
    assert sighup == [f"mcprun: SIGHUP: reloaded the policy {tmp_path / 'policy'}\n",
                      f"mcprun: SIGHUP: fetching the keys from {idp.jwks_url}\n", fetched], sighup
