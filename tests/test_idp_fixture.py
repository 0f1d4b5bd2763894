"""A self-test of tests/idp.py: the real OAuth 2 server's tokens verify against its JWKS with joserfc."""

from __future__ import annotations

import time

import pytest
from idp import CLIENT_ID, decoded, identity_provider
from joserfc import jwt
from joserfc.errors import ExpiredTokenError, InvalidClaimError, InvalidKeyIdError
from joserfc.jwk import KeySet

ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA", "Ed25519"]
AUDIENCE = "https://mcp.example/mcp"


def verified(idp, token: str, algorithm: str = "RS256") -> dict:
    """The claims of token, its signature checked against the IdP's JWKS as served now."""
    return jwt.decode(token, KeySet.import_key_set(idp.jwks()), algorithms=[algorithm]).claims


def test_token_verifies_with_issuer_audience_scope_and_expiry(tmp_path):
    with identity_provider(tmp_path) as idp:
        assert idp.url.startswith("http://127.0.0.1:") and idp.jwks_url == f"{idp.url}/jwks"
        before = int(time.time())
        token = idp.token(scope="tools:call", audience=AUDIENCE)
        header, _ = decoded(token)
        assert header["alg"] == "RS256" and header["kid"] == idp.kid
        assert [key["kid"] for key in idp.jwks()["keys"]] == [idp.kid]
        assert all("d" not in key for key in idp.jwks()["keys"])  # public keys only
        claims = verified(idp, token)
        jwt.JWTClaimsRegistry(iss={"essential": True, "value": idp.url}, aud={"essential": True, "value": AUDIENCE},
                              exp={"essential": True}, scope={"essential": True, "value": "tools:call"},
                              sub={"essential": True, "value": CLIENT_ID}).validate(claims)
        assert before - 2 <= claims["iat"] <= time.time() + 2
        assert claims["exp"] - claims["iat"] == 3600
        assert claims["client_id"] == CLIENT_ID and claims["jti"]
        with pytest.raises(InvalidClaimError):
            jwt.JWTClaimsRegistry(aud={"essential": True, "value": "https://elsewhere/mcp"}).validate(claims)
        # no scope asked: no scope claim; several audiences: a list
        claims = verified(idp, idp.token(audience=[AUDIENCE, "https://other.example"]))
        assert "scope" not in claims and claims["aud"] == [AUDIENCE, "https://other.example"]
        assert verified(idp, idp.token(scope="tools:call tools:list"))["scope"] == "tools:call tools:list"


def test_expires_in(tmp_path):
    with identity_provider(tmp_path) as idp:
        claims = verified(idp, idp.token(scope="tools:call", audience=AUDIENCE, expires_in=-60))
        assert claims["exp"] < time.time() - 50
        with pytest.raises(ExpiredTokenError):
            jwt.JWTClaimsRegistry(exp={"essential": True}).validate(claims)
        claims = verified(idp, idp.token(expires_in=5))
        assert claims["exp"] == claims["iat"] + 5
        jwt.JWTClaimsRegistry(exp={"essential": True}).validate(claims)


def test_claims_override_and_remove(tmp_path):
    with identity_provider(tmp_path) as idp:
        claims = verified(idp, idp.token(scope="tools:call", audience=AUDIENCE,
                                         claims={"iss": "https://other", "sub": "x", "tenant": {"id": 7}}))
        assert claims["iss"] == "https://other" and claims["sub"] == "x" and claims["tenant"] == {"id": 7}
        assert claims["aud"] == AUDIENCE and claims["scope"] == "tools:call"
        claims = verified(idp, idp.token(audience=AUDIENCE, claims={"exp": None, "aud": "https://x", "scope": "a b"}))
        assert "exp" not in claims and claims["aud"] == "https://x" and claims["scope"] == "a b"


def test_rotate(tmp_path):
    with identity_provider(tmp_path) as idp:
        old_kid = idp.kid
        old_token = idp.token(scope="tools:call")
        old_jwks = idp.jwks()
        idp.rotate()
        assert idp.kid != old_kid
        new_token = idp.token(scope="tools:call")
        assert decoded(new_token)[0]["kid"] == idp.kid
        assert decoded(idp.token())[0]["kid"] == idp.kid  # every later token, not round-robin
        assert idp.kid not in [key["kid"] for key in old_jwks["keys"]]
        assert sorted(key["kid"] for key in idp.jwks()["keys"]) == sorted([old_kid, idp.kid])
        with pytest.raises(InvalidKeyIdError):  # the stale key set does not know the new kid
            jwt.decode(new_token, KeySet.import_key_set(old_jwks), algorithms=["RS256"])
        assert verified(idp, new_token)["scope"] == "tools:call"
        assert verified(idp, old_token)["scope"] == "tools:call"  # the old key is still published
        idp.rotate("ES256")
        header, _ = decoded(idp.token())
        assert header["alg"] == "ES256" and header["kid"] == idp.kid
        assert len(idp.jwks()["keys"]) == 3
        verified(idp, idp.token(), "ES256")
        with pytest.raises(AssertionError, match="rotate|Unsupported|algorithm|alg"):
            idp.rotate("HS256")
        verified(idp, idp.token(), "ES256")  # still serving


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.filterwarnings("ignore:EdDSA is deprecated")  # RFC 9864 (Ed25519 is its successor)
def test_algorithms(tmp_path, algorithm):
    with identity_provider(tmp_path, algorithm) as idp:
        header, _ = decoded(token := idp.token(scope="tools:call", audience=AUDIENCE))
        assert header["alg"] == algorithm and idp.jwks()["keys"][0]["alg"] == algorithm
        assert verified(idp, token, algorithm)["aud"] == AUDIENCE


def test_server_is_killed_on_exit_even_on_failure(tmp_path):
    with pytest.raises(RuntimeError), identity_provider(tmp_path) as idp:
        process = idp.process
        raise RuntimeError("a failing test")
    assert process.poll() is not None


def test_bad_requests_are_rejected(tmp_path):
    import urllib.request

    with identity_provider(tmp_path) as idp:
        for form, error in [(b"claims=%5B1%5D", "Invalid 'claims'"), (b"expires_in=soon", "Invalid 'expires_in'")]:
            request = urllib.request.Request(idp.token_url, data=b"grant_type=client_credentials&" + form)
            with pytest.raises(AssertionError, match=f"400 .*{error}"):
                idp._http(request)
        verified(idp, idp.token())  # still serving
    with pytest.raises(AssertionError, match="exited"), identity_provider(tmp_path / "bad", "HS999"):
        pass


def test_missing_node_fails_clearly(tmp_path, monkeypatch):
    import node

    monkeypatch.setattr(node.shutil, "which", lambda name: None)
    with pytest.raises(pytest.fail.Exception, match=r"node is not installed.*\.ci/run installs"):
        with identity_provider(tmp_path):
            pass
