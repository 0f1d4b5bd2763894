"""The gateway's pieces, each on its own, in-process: a real ASGI call through the piece to a small app.

The end-to-end tests (test_production.py, test_workers.py) drive the whole gateway through real clients;
these pin what each piece does by itself, so a change to one shows where it went wrong.
"""

import json
import logging
import re
import sys

import anyio
import pytest
from helpers import ROOT

sys.path.insert(0, str(ROOT))
import mcprun  # noqa: E402

TIMEOUT = 10.0  # seconds for anything below


class App:
    """An ASGI app that records what reached it and answers with status (and headers), after its body."""

    def __init__(self, status=200, headers=(), body=b"{}", hold: anyio.Event | None = None):
        self.status, self.headers, self.body, self.hold = status, list(headers), body, hold
        self.seen: list[dict] = []

    async def __call__(self, scope, receive, send):
        self.seen.append(scope)
        while (await receive()).get("more_body"):
            pass
        if self.hold:
            await self.hold.wait()
        await send({"type": "http.response.start", "status": self.status, "headers": self.headers})
        await send({"type": "http.response.body", "body": self.body})


def request(app, method="POST", path="/mcp", headers=(), body=b"", client=("10.0.0.1", 5000)) -> dict:
    """Call app with one HTTP request; return the status, headers and body it answered with."""
    async def call():
        answer = {"status": None, "headers": {}, "body": b""}
        scope = {"type": "http", "method": method, "path": path, "raw_path": path.encode(), "query_string": b"",
                 "headers": [(k.lower().encode(), v.encode()) for k, v in headers], "client": client}
        messages = [{"type": "http.request", "body": body}]

        async def receive():
            return messages.pop(0) if messages else {"type": "http.disconnect"}

        async def send(message):
            if message["type"] == "http.response.start":
                answer["status"], answer["headers"] = message["status"], dict(message.get("headers", ()))
            else:
                answer["body"] += message.get("body", b"")

        with anyio.fail_after(TIMEOUT):
            await app(scope, receive, send)
        return answer

    return anyio.run(call)


def settings(**chosen) -> mcprun.Settings:
    return mcprun.Settings(spec="t", transport=chosen.pop("transport", "http"), **chosen)


def test_health_answers_its_routes_and_passes_the_rest():
    app, state = App(), ["starting"]
    health = mcprun.Health(app, settings(), lambda: state[0])
    assert request(health, "GET", "/healthz")["status"] == 200
    assert (request(health, "GET", "/readyz")["status"], json.loads(request(health, "GET", "/readyz")["body"])) \
        == (503, {"status": "starting"})
    state[0] = "ready"
    assert request(health, "GET", "/readyz")["status"] == 200
    assert request(health)["status"] == 200 and len(app.seen) == 1


def test_closing_refuses_streams_while_draining_and_everything_once_drained():
    class Calls:
        stopping = stopped = False

    app, calls = App(), Calls()
    closing = mcprun.Closing(app, calls)
    assert request(closing, "GET")["status"] == 200
    calls.stopping = True
    refused = request(closing, "GET")
    assert refused["status"] == 503 and refused["headers"][b"connection"] == b"close"
    assert request(closing, "POST")["status"] == 200  # a call in a drain: Calls decides
    calls.stopped = True
    assert request(closing, "POST")["status"] == 503
    assert len(app.seen) == 2


def test_sessions_cap_each_address_at_its_share():
    opened = iter(range(100))

    class NewSession(App):
        async def __call__(self, scope, receive, send):
            self.headers = [(b"mcp-session-id", f"s{next(opened)}".encode())]
            await super().__call__(scope, receive, send)

    sessions = mcprun.Sessions(NewSession(), settings(max_sessions=8))  # a quarter each: 2
    assert [request(sessions)["status"] for _ in range(3)] == [200, 200, 429]
    assert request(sessions, client=("10.0.0.2", 5000))["status"] == 200  # another address is served
    assert request(sessions, headers=[("mcp-session-id", "s0")])["status"] == 200  # a request in a session
    assert request(sessions, "DELETE", headers=[("mcp-session-id", "s0")])["status"] == 200  # ends it
    assert request(sessions)["status"] == 200  # its place is free again


def test_large_bodies_wait_for_one_of_their_places():
    hold = anyio.Event()

    class Holding(App):  # a large call holds its place until hold is set
        async def __call__(self, scope, receive, send):
            self.hold = hold if dict(scope["headers"])[b"content-length"] != b"10" else None
            await super().__call__(scope, receive, send)

    large = mcprun.LargeBodies(Holding(), settings(read_timeout=0.5))

    async def call(length: int) -> int:
        answer = {}

        async def send(message):
            if message["type"] == "http.response.start":
                answer["status"] = message["status"]

        async def receive():
            return {"type": "http.request", "body": b""}

        scope = {"type": "http", "method": "POST", "path": "/mcp", "client": ("10.0.0.1", 1),
                 "headers": [(b"content-length", str(length).encode())]}
        await large(scope, receive, send)
        return answer["status"]

    async def main():
        statuses = []

        async def one():
            statuses.append(await call(mcprun.LARGE_BODY + 1))

        with anyio.fail_after(TIMEOUT):
            async with anyio.create_task_group() as group:
                for _ in range(mcprun.LARGE_AT_ONCE + 1):
                    group.start_soon(one)
                while not statuses:  # the one past the places waits 0.5 s for one, then is refused
                    await anyio.sleep(0.01)
                refused = list(statuses)
                small = await call(10)  # a small body never waits
                hold.set()
        return refused, small, sorted(statuses)

    refused, small, statuses = anyio.run(main)
    assert refused == [503] and small == 200
    assert statuses == [200] * mcprun.LARGE_AT_ONCE + [503]


def test_access_log_writes_one_escaped_line_per_request(caplog):
    async def app(scope, receive, send):
        scope[mcprun.FLIGHT] = mcprun.Flight(stream=False, session="abcdefghijkl", cancel=None, rpc="tools/call",
                                             tool="evil\ntool", status=202)
        await App(status=202)(scope, receive, send)

    with caplog.at_level(logging.INFO, logger="mcprun.access"):
        request(mcprun.AccessLog(app), path="/mcp\x1b[31m")
    [record] = [r for r in caplog.records if r.name == "mcprun.access"]
    assert re.fullmatch(r'10\.0\.0\.1:5000 "POST /mcp\\x1b\[31m" 202 [\d.]+ms session=abcdefgh… rpc=tools/call '
                        r"tool=evil\\ntool", record.getMessage()), record.getMessage()
    assert record.fields["status"] == 202


def test_access_log_is_silent_for_a_request_refused_before_the_book_of_calls(caplog):
    with caplog.at_level(logging.INFO, logger="mcprun.access"):
        request(mcprun.AccessLog(App(status=503)))
    assert not [r for r in caplog.records if r.name == "mcprun.access"]


@pytest.mark.parametrize("content_type", ["text/plain", ""])
def test_json_only_refuses_a_post_of_anything_but_json(content_type):
    app = App()
    answer = request(mcprun.JsonOnly(app, settings()), headers=[("content-type", content_type)] if content_type else ())
    assert answer["status"] == 415 and json.loads(answer["body"])["error"]["code"] == -32600
    assert request(mcprun.JsonOnly(app, settings()), headers=[("content-type", "application/json")])["status"] == 200


def test_bearer_auth_takes_a_token_from_the_header_only_and_names_its_caller():
    app = App()
    auth = mcprun.BearerAuth(app, {"s3cret": "ops", "other-s3cret": "ci"})
    assert request(auth)["status"] == 401
    assert request(auth, headers=[("authorization", "Bearer wrong")])["headers"][b"www-authenticate"] \
        == b'Bearer realm="mcp", error="invalid_token"'
    assert request(auth, headers=[("authorization", "Bearer s3cret")])["status"] == 200
    assert len(app.seen) == 1
    flights = []

    async def on_a_flight(scope, receive, send):
        flights.append(scope.setdefault(mcprun.FLIGHT, mcprun.Flight(stream=False, session=None, cancel=None)))
        await auth(scope, receive, send)

    assert request(on_a_flight, headers=[("authorization", "Bearer other-s3cret")])["status"] == 200
    assert flights[-1].caller == "ci"
    auth.replace({"next-s3cret": "ops"})  # SIGHUP
    assert request(auth, headers=[("authorization", "Bearer s3cret")])["status"] == 401
    assert request(on_a_flight, headers=[("authorization", "Bearer next-s3cret")])["status"] == 200
    assert flights[-1].caller == "ops"
