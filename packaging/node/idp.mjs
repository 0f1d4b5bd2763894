// A real OAuth 2 authorization server for mcprun's JWT tests: oauth2-mock-server on 127.0.0.1.
//
//   node idp.mjs [NODE_MODULES [ALGORITHM]]   (defaults: ./node_modules next to this file, RS256)
//
// Prints one JSON line, {"url", "jwks_url", "token_url", "kid", "algorithm"}, once it listens on a
// free port, then serves until stdin closes (or a signal). tests/idp.py drives it.
//
// POST /token (grant_type=client_credentials) takes, besides the standard fields (client_id or
// basic auth, scope, and aud or RFC 8707's resource), these extra form fields, applied to the
// access token before it is signed:
//   expires_in  seconds from now for "exp" (negative: already expired); the response says the same
//   claims      a JSON object of claims to set or override ("iss", "sub", "aud", ...); null removes one
// Every access token also carries sub and client_id (the client's id) and a jti, per RFC 9068.
//
// stdin, one command a line, each answered by one JSON line on stdout:
//   rotate ALGORITHM   add a new key (new kid) to the JWKS and sign with it from now on: {"kid", "algorithm"}
// A failed command answers {"error": MESSAGE}.

import { AssertionError } from "node:assert";
import { randomUUID, webcrypto } from "node:crypto";
import { createRequire } from "node:module";
import { dirname, join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath, pathToFileURL } from "node:url";

globalThis.crypto ??= webcrypto; // jose 6 uses the global; Node 18 (Debian 12's) only has it behind a flag

const here = dirname(fileURLToPath(import.meta.url));
const modules = resolve(process.argv[2] ?? join(here, "node_modules"));
const algorithm = process.argv[3] ?? "RS256";
const resolveFrom = createRequire(join(modules, "_.js"));
const { OAuth2Server } = await import(pathToFileURL(resolveFrom.resolve("oauth2-mock-server")).href);
const basicAuth = resolveFrom("basic-auth");

const server = new OAuth2Server();
let signingKid = (await server.issuer.keys.generate(algorithm)).kid;

// The library picks keys round-robin; sign with the newest (rotate's) key instead.
const buildToken = server.issuer.buildToken.bind(server.issuer);
server.issuer.buildToken = (options) => buildToken({ ...options, kid: options?.kid ?? signingKid });

function customize(token, req) {
  const body = req.body ?? {};
  const payload = token.payload;
  const credentials = basicAuth(req);
  const clientId = credentials ? credentials.name : body.client_id;
  if (typeof clientId === "string" && body.grant_type === "client_credentials") {
    payload.sub ??= clientId;
    payload.client_id ??= clientId;
  }
  if (payload.aud === undefined && body.resource !== undefined) {
    payload.aud = body.resource;
  }
  payload.jti ??= randomUUID();
  if (body.expires_in !== undefined) {
    const seconds = Number(body.expires_in);
    if (typeof body.expires_in !== "string" || !Number.isInteger(seconds)) {
      throw new AssertionError({ message: "Invalid 'expires_in': an integer number of seconds" });
    }
    payload.exp = payload.iat + seconds;
    req.idpExpiresIn = seconds;
  }
  if (body.claims !== undefined) {
    let claims;
    try {
      claims = JSON.parse(body.claims);
    } catch {
      claims = undefined;
    }
    if (claims === null || typeof claims !== "object" || Array.isArray(claims)) {
      throw new AssertionError({ message: "Invalid 'claims': a JSON object" });
    }
    for (const [name, value] of Object.entries(claims)) {
      if (value === null) delete payload[name];
      else payload[name] = value;
    }
  }
}

server.service.on("beforeTokenSigning", customize);
server.service.on("beforeResponse", (response, req) => {
  if (req.idpExpiresIn !== undefined && response.statusCode === 200) {
    response.body.expires_in = req.idpExpiresIn;
  }
});

await server.start(0, "127.0.0.1");
const url = `http://127.0.0.1:${server.address().port}`; // the library would say localhost
server.issuer.url = url;

function say(message) {
  process.stdout.write(`${JSON.stringify(message)}\n`);
}

say({ url, jwks_url: `${url}/jwks`, token_url: `${url}/token`, kid: signingKid, algorithm });

const commands = createInterface({ input: process.stdin, terminal: false });
let queue = Promise.resolve();
commands.on("line", (line) => {
  queue = queue.then(async () => {
    const [command, ...args] = line.trim().split(/\s+/);
    try {
      if (command === "rotate" && args.length <= 1) {
        const key = await server.issuer.keys.generate(args[0] ?? "RS256");
        signingKid = key.kid;
        say({ kid: key.kid, algorithm: key.alg });
      } else {
        say({ error: `unknown command: ${line.trim()}` });
      }
    } catch (error) {
      say({ error: String(error?.message ?? error) });
    }
  });
});
commands.on("close", () => {
  queue.then(() => process.exit(0));
});
