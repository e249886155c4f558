// A real OpenID provider (the npm package oidc-provider, pinned in package.json) for the pacsbridge
// test suite. It runs on 127.0.0.1 only, in plain HTTP, and keeps everything in memory.
//
// Usage: node provider.mjs CONFIG.json      (tests/support/oidc.py writes CONFIG.json and starts this)
//
// CONFIG.json:
//   port                  TCP port to listen on (127.0.0.1 only)
//   issuer                e.g. "http://127.0.0.1:PORT"
//   audience              the API audience put in every access token's "aud", e.g. "pacsbridge"
//   clients               [{client_id, client_secret, scopes: "a b c", patient?: "PAT-1", opaque?: true}]
//   jwks_file             path of a JSON file {"keys": [...]} holding the PRIVATE signing keys (RS256)
//   token_ttl             access token lifetime in seconds
//   viewer_redirect_uris  optional list of redirect URIs of the public "viewer" client (code + PKCE)
//
// What it does:
// 1. Confidential clients use the client_credentials grant, authenticating with client_secret_basic or
//    client_secret_post (oidc-provider accepts either for a client registered with one of them).
// 2. Access tokens are JWTs (RFC 9068, header typ "at+jwt", RS256) carrying iss, aud = audience,
//    client_id, sub (= client_id for client_credentials), scope, iat, exp, jti, and, for a client with
//    "patient", an extra claim "patient". This uses features.resourceIndicators: oidc-provider wants a
//    resource indicator to be an absolute URI, so when `audience` is not one the resource indicator is
//    "urn:pacsbridge-test:audience:<audience>"; it is the default resource of every client and its
//    resource server info carries audience = `audience`. A client may also send that resource explicitly
//    (resource=<audience> itself when `audience` is an absolute URI).
// 3. Scopes: every client's "scopes" are registered as provider scopes (static) and as that client's
//    allowed "scope" metadata, and the resource server accepts the union of all of them. So a client gets
//    any subset of its own scopes and a request for a scope of another client fails with invalid_scope.
//    A token request without "scope" yields a token without scope (callers name the scopes they want).
// 4. A client with "opaque": true gets opaque access tokens (accessTokenFormat "opaque", decided per
//    client in getResourceServerInfo); use introspection to read them.
// 5. Token introspection (RFC 7662, features.introspection) and revocation (RFC 7009) are enabled. Any
//    confidential client may introspect any token; a public client only its own. oidc-provider does not
//    keep JWT access tokens, so it answers 400 unsupported_token_type for a JWT presented to the
//    introspection or revocation endpoint: introspect the tokens of an "opaque" client (their response
//    carries the patient claim too). Tokens live in memory: after a restart (key rotation) earlier opaque
//    tokens introspect as inactive.
// 6. One public client "viewer" (token_endpoint_auth_method none, authorization_code + PKCE S256,
//    response type code, redirect URIs from viewer_redirect_uris) may sign in through oidc-provider's
//    built-in development interactions: the login form accepts any login and every login becomes the
//    fixed account "test-user". CORS is allowed for every origin (loopback tests only).
// 7. Key rotation is done by the caller: stop this process (SIGTERM/SIGINT exit at once, releasing the
//    port) and start it again on the same port with another jwks_file.
// 8. Prints "READY <issuer>" on stdout once listening. oidc-provider's development-only notices (in-memory
//    adapter, dev interactions, unsupported runtime) are dropped; other console output is kept.

import { readFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { createServer } from 'node:http';

const QUIET = [
  'a quick start development-only',
  'you\'ve configured your own interactions.url',
  'Unsupported runtime',
];
for (const method of ['info', 'warn']) {
  const original = console[method].bind(console);
  console[method] = (...args) => {
    const text = String(args[0] ?? '');
    if (text.startsWith('oidc-provider') && QUIET.some((q) => text.includes(q))) return;
    original(...args);
  };
}

const { default: Provider, errors } = await import('oidc-provider');

const configPath = process.argv[2];
if (!configPath) {
  console.error('usage: node provider.mjs CONFIG.json');
  process.exit(2);
}
const config = JSON.parse(readFileSync(configPath, 'utf8'));
const {
  port, issuer, audience, clients = [], jwks_file: jwksFile, token_ttl: tokenTtl = 300,
  viewer_redirect_uris: viewerRedirectUris = [],
} = config;
const jwks = JSON.parse(readFileSync(jwksFile, 'utf8'));

const TEST_ACCOUNT = 'test-user';
const VIEWER = 'viewer';

const isAbsoluteUri = (value) => {
  try {
    return Boolean(new URL(value).protocol);
  } catch {
    return false;
  }
};
const RESOURCE = isAbsoluteUri(audience) ? audience : `urn:pacsbridge-test:audience:${audience}`;

const splitScopes = (value) => String(value ?? '').split(/\s+/).filter(Boolean);
const clientsById = new Map(clients.map((c) => [c.client_id, c]));
const allScopes = new Set(clients.flatMap((c) => splitScopes(c.scopes)));
const viewerScopes = ['openid', 'profile', 'offline_access', ...allScopes];

const providerClients = clients.map((c) => ({
  client_id: c.client_id,
  client_secret: c.client_secret,
  grant_types: ['client_credentials'],
  response_types: [],
  redirect_uris: [],
  token_endpoint_auth_method: 'client_secret_basic',
  scope: splitScopes(c.scopes).join(' ') || undefined,
}));
providerClients.push({
  client_id: VIEWER,
  application_type: 'web',
  token_endpoint_auth_method: 'none',
  grant_types: ['authorization_code', 'refresh_token'],
  response_types: ['code'],
  redirect_uris: viewerRedirectUris,
  scope: viewerScopes.join(' '),
});

const provider = new Provider(issuer, {
  clients: providerClients,
  jwks,
  cookies: { keys: [randomBytes(32).toString('base64url')] },
  scopes: ['openid', 'offline_access', 'profile', ...allScopes],
  claims: { openid: ['sub'], profile: ['name', 'preferred_username'] },
  async findAccount(_ctx, _id) {
    return {
      accountId: TEST_ACCOUNT,
      async claims() {
        return { sub: TEST_ACCOUNT, name: 'Test User', preferred_username: TEST_ACCOUNT };
      },
    };
  },
  pkce: { required: () => true },
  clientBasedCORS: () => true,
  ttl: {
    AccessToken: tokenTtl,
    ClientCredentials: tokenTtl,
    AuthorizationCode: 60,
    IdToken: tokenTtl,
    RefreshToken: 24 * 3600,
    Grant: 24 * 3600,
    Interaction: 3600,
    Session: 24 * 3600,
  },
  async extraTokenClaims(_ctx, token) {
    const client = clientsById.get(token.clientId);
    if (client?.patient) return { patient: client.patient };
    return undefined;
  },
  features: {
    devInteractions: { enabled: true },
    clientCredentials: { enabled: true },
    introspection: {
      enabled: true,
      async allowedPolicy(ctx, client, token) {
        return client.clientAuthMethod !== 'none' || token.clientId === client.clientId;
      },
    },
    revocation: {
      enabled: true,
      async allowedPolicy(_ctx, client, token) {
        return token.clientId === client.clientId;
      },
    },
    resourceIndicators: {
      enabled: true,
      async defaultResource() {
        return RESOURCE;
      },
      async useGrantedResource() {
        return true;
      },
      async getResourceServerInfo(_ctx, resourceIndicator, client) {
        if (resourceIndicator !== RESOURCE) throw new errors.InvalidTarget();
        const entry = clientsById.get(client?.clientId);
        return {
          scope: [...allScopes].join(' '),
          audience,
          accessTokenTTL: tokenTtl,
          accessTokenFormat: entry?.opaque ? 'opaque' : 'jwt',
          jwt: { sign: { alg: 'RS256' } },
        };
      },
    },
  },
});

// The development login form accepts any login; every login becomes the one test account.
const interactionFinished = provider.interactionFinished.bind(provider);
provider.interactionFinished = (req, res, result, options) => {
  if (result?.login) result.login.accountId = TEST_ACCOUNT;
  return interactionFinished(req, res, result, options);
};

provider.on('server_error', (_ctx, err) => console.error('oidc-provider server_error:', err));

const server = createServer(provider.callback());
server.on('error', (err) => {
  console.error(`cannot listen on 127.0.0.1:${port}: ${err.message}`);
  process.exit(1);
});
server.listen(port, '127.0.0.1', () => {
  process.stdout.write(`READY ${issuer}\n`);
});

for (const signal of ['SIGTERM', 'SIGINT', 'SIGHUP']) {
  process.on(signal, () => process.exit(0));
}
