// oidc-provider (the certified OpenID provider by panva), configured for the tests of the
// services that accept its tokens.
//
// This file only configures the provider: every endpoint, token and signature is
// oidc-provider's own. What it adds is test-friendly configuration:
//
// - clients and accounts from JSON files, each with its roles;
// - JWT access tokens (resource indicators) for a configurable default audience, carrying the
//   roles in a configurable claim (`roles` by default): a client's roles for
//   client_credentials, the signed-in account's roles for the authorization-code flow;
// - the authorization-code flow with PKCE (S256) required for every client;
// - a non-interactive sign-in: GET /interaction/:uid signs in the account named by the
//   authorization request's `login_hint` (or the default account) and grants consent, so a
//   headless browser or an HTTP client that follows redirects (and keeps cookies) ends at
//   the client's redirect URI with a code;
// - or, with --interactive, a sign-in page: GET /interaction/:uid shows a form (account and
//   password, the account prefilled from `login_hint`) that posts to
//   /interaction/:uid/login; a known account (with its password, when it has one) is signed
//   in, anything else gets the form again with the reason. Consent is still granted without
//   a page;
// - signing keys from a JWKS file (private keys; the first one signs), so that tests can
//   rotate keys and keep or drop the old ones.
//
// Usage:
//   node provider.mjs --port 8080 --clients clients.json [--accounts accounts.json]
//        [--jwks jwks.json] [--issuer URL] [--audience urn:taxi-reporting] [--scope reports]
//        [--roles-claim roles] [--access-token-ttl 600] [--default-account alice]
//        [--host 127.0.0.1] [--interactive]
//   node provider.mjs keygen [--alg RS256|ES256]     prints one private JWK (with kid)
//
// Every option may also come from the environment: OIDC_PORT, OIDC_CLIENTS, OIDC_ACCOUNTS,
// OIDC_JWKS, OIDC_ISSUER, OIDC_AUDIENCE, OIDC_SCOPE, OIDC_ROLES_CLAIM,
// OIDC_ACCESS_TOKEN_TTL, OIDC_DEFAULT_ACCOUNT, OIDC_HOST, OIDC_INTERACTIVE=1.
//
// clients.json: an array of oidc-provider client metadata (client_id, client_secret,
// redirect_uris, grant_types, response_types, token_endpoint_auth_method, ...) where each
// entry may also hold:
//   roles              array of strings, put in client_credentials access tokens
//   access_token_ttl   seconds, this client's access token lifetime
//   not_before_offset  seconds; when present, access tokens carry nbf = iat + offset
// accounts.json: an array of { "id": "alice", "roles": ["analyst"], "claims": { ... },
// "password": "..." } (the password is optional, and checked by the sign-in page only).
//
// When listening, one line is printed on stdout:
//   {"ready":true,"issuer":"http://127.0.0.1:8080","port":8080,"kids":["..."]}

import * as crypto from 'node:crypto';
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';

import Provider from 'oidc-provider';

const EXTRA_CLIENT_FIELDS = ['roles', 'access_token_ttl', 'not_before_offset'];

function fail(message) {
  process.stderr.write(`provider.mjs: ${message}\n`);
  process.exit(2);
}

function readJson(path, what) {
  let text;
  try {
    text = readFileSync(path, 'utf8');
  } catch (error) {
    fail(`reading the ${what} file ${path}: ${error.message}`);
  }
  try {
    return JSON.parse(text);
  } catch (error) {
    fail(`the ${what} file ${path} is not JSON: ${error.message}`);
  }
  return undefined;
}

function generateKey(alg) {
  let pair;
  switch (alg) {
    case 'RS256':
      pair = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
      break;
    case 'ES256':
      pair = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
      break;
    default:
      fail(`unsupported key algorithm ${alg} (RS256 or ES256)`);
  }
  const jwk = pair.privateKey.export({ format: 'jwk' });
  return {
    ...jwk, kid: crypto.randomBytes(12).toString('base64url'), alg, use: 'sig',
  };
}

function originOf(uri) {
  try {
    return new URL(uri).origin;
  } catch {
    return undefined;
  }
}

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    port: { type: 'string', default: process.env.OIDC_PORT },
    host: { type: 'string', default: process.env.OIDC_HOST ?? '127.0.0.1' },
    issuer: { type: 'string', default: process.env.OIDC_ISSUER },
    clients: { type: 'string', default: process.env.OIDC_CLIENTS },
    accounts: { type: 'string', default: process.env.OIDC_ACCOUNTS },
    jwks: { type: 'string', default: process.env.OIDC_JWKS },
    audience: { type: 'string', default: process.env.OIDC_AUDIENCE ?? 'urn:taxi-reporting' },
    scope: { type: 'string', default: process.env.OIDC_SCOPE ?? 'reports' },
    'roles-claim': { type: 'string', default: process.env.OIDC_ROLES_CLAIM ?? 'roles' },
    'access-token-ttl': { type: 'string', default: process.env.OIDC_ACCESS_TOKEN_TTL ?? '600' },
    'default-account': { type: 'string', default: process.env.OIDC_DEFAULT_ACCOUNT },
    alg: { type: 'string', default: 'RS256' },
    interactive: { type: 'boolean', default: process.env.OIDC_INTERACTIVE === '1' },
  },
});

if (positionals[0] === 'keygen') {
  process.stdout.write(`${JSON.stringify(generateKey(values.alg))}\n`);
  process.exit(0);
} else if (positionals.length > 0) {
  fail(`unknown command ${positionals[0]} (only keygen)`);
}

const port = Number.parseInt(values.port ?? '', 10);
if (!Number.isInteger(port) || port <= 0 || port > 65535) {
  fail('--port (or OIDC_PORT) must be a TCP port');
}
if (!values.clients) {
  fail('--clients (or OIDC_CLIENTS) must name the clients file');
}
const accessTokenTtl = Number.parseInt(values['access-token-ttl'], 10);
if (!Number.isInteger(accessTokenTtl) || accessTokenTtl <= 0) {
  fail('--access-token-ttl must be a positive number of seconds');
}
const issuer = values.issuer ?? `http://127.0.0.1:${port}`;
const audience = values.audience;
const resourceScope = values.scope;
const rolesClaim = values['roles-claim'];
const defaultAccount = values['default-account'];

// Clients: oidc-provider's metadata, and what this file adds per client.
const clientEntries = readJson(values.clients, 'clients');
if (!Array.isArray(clientEntries)) fail('the clients file must hold a JSON array');
const clientExtras = new Map();
const clients = clientEntries.map((entry) => {
  if (typeof entry?.client_id !== 'string') fail('every client needs a client_id');
  const metadata = { ...entry };
  const extras = {};
  for (const field of EXTRA_CLIENT_FIELDS) {
    if (field in metadata) {
      extras[field] = metadata[field];
      delete metadata[field];
    }
  }
  clientExtras.set(entry.client_id, extras);
  return metadata;
});

// Accounts: id, roles, and any standard claims.
const accountEntries = values.accounts ? readJson(values.accounts, 'accounts') : [];
if (!Array.isArray(accountEntries)) fail('the accounts file must hold a JSON array');
const accounts = new Map();
for (const entry of accountEntries) {
  if (typeof entry?.id !== 'string') fail('every account needs an id');
  accounts.set(entry.id, {
    roles: entry.roles ?? [], claims: entry.claims ?? {}, password: entry.password,
  });
}

// Signing keys: the file's (the first one of an algorithm signs), or one made now.
let keys;
if (values.jwks) {
  const jwks = readJson(values.jwks, 'JWKS');
  keys = Array.isArray(jwks) ? jwks : jwks?.keys;
  if (!Array.isArray(keys) || keys.length === 0) fail('the JWKS file must hold {"keys": [...]}');
} else {
  keys = [generateKey('RS256')];
}
const signingAlg = keys[0].alg ?? 'RS256';

const clientTtl = (client) => clientExtras.get(client?.clientId)?.access_token_ttl
  ?? accessTokenTtl;

const configuration = {
  clients,
  jwks: { keys },
  cookies: { keys: [crypto.randomBytes(32).toString('base64url')] },
  claims: {
    openid: ['sub'],
    profile: ['name', 'given_name', 'family_name', 'preferred_username'],
    email: ['email', 'email_verified'],
    roles: [rolesClaim],
  },
  scopes: ['openid', 'offline_access', ...resourceScope.split(' ')].filter(Boolean),
  clientDefaults: {
    grant_types: ['authorization_code'],
    id_token_signed_response_alg: signingAlg,
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
  },
  pkce: { required: () => true },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    introspection: { enabled: true },
    revocation: { enabled: true },
    rpInitiatedLogout: {
      enabled: true,
      // Submits itself: a headless browser is signed out without a click.
      async logoutSource(ctx, form) {
        ctx.body = `<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Sign-out</title></head>
<body>${form}
<button type="submit" form="op.logoutForm" value="yes" name="logout" id="yes">Sign out</button>
<script>document.getElementById('yes').click()</script>
</body></html>`;
      },
    },
    resourceIndicators: {
      enabled: true,
      defaultResource: async (ctx, client, oneOf) => oneOf ?? audience,
      useGrantedResource: async () => true,
      // Any absolute URI is a resource server here, its own audience: tests can ask for
      // tokens meant for another service.
      getResourceServerInfo: async (ctx, resourceIndicator, client) => ({
        scope: resourceScope,
        audience: resourceIndicator,
        accessTokenFormat: 'jwt',
        accessTokenTTL: clientTtl(client),
        jwt: { sign: { alg: signingAlg } },
      }),
    },
  },
  extraTokenClaims: async (ctx, token) => {
    let roles;
    if (token.kind === 'ClientCredentials') {
      roles = clientExtras.get(token.clientId)?.roles;
    } else if (token.accountId) {
      roles = accounts.get(token.accountId)?.roles;
    }
    return roles === undefined ? undefined : { [rolesClaim]: roles };
  },
  formats: {
    customizers: {
      jwt: async (ctx, token, jwt) => {
        const offset = clientExtras.get(token.clientId)?.not_before_offset;
        if (typeof offset === 'number') {
          jwt.payload.nbf = jwt.payload.iat + offset;
        }
      },
    },
  },
  ttl: {
    AccessToken: (ctx, token, client) => clientTtl(client),
    ClientCredentials: (ctx, token, client) => clientTtl(client),
  },
  findAccount: async (ctx, id) => {
    const account = accounts.get(id);
    if (!account) return undefined;
    return {
      accountId: id,
      claims: async () => ({
        preferred_username: id,
        ...account.claims,
        sub: id,
        [rolesClaim]: account.roles,
      }),
    };
  },
  interactions: {
    url: async (ctx, interaction) => `/interaction/${interaction.uid}`,
  },
  clientBasedCORS: (ctx, origin, client) => origin !== 'null'
    && client.redirectUris.some((uri) => originOf(uri) === origin),
  renderError: async (ctx, out) => {
    ctx.type = 'json';
    ctx.body = out;
  },
};

let provider;
try {
  provider = new Provider(issuer, configuration);
} catch (error) {
  fail(`configuration refused: ${error.message}`);
}
provider.proxy = false;

function escapeHtml(text) {
  return String(text ?? '').replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

// The sign-in page of --interactive.
function loginPage(ctx, uid, clientId, login, problem) {
  ctx.status = 200;
  ctx.type = 'html';
  ctx.set('Cache-Control', 'no-store');
  ctx.body = `<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Sign in</title></head>
<body>
<h1>Sign in to ${escapeHtml(clientId)}</h1>
${problem ? `<p id="problem">${escapeHtml(problem)}</p>` : ''}
<form method="post" action="/interaction/${escapeHtml(uid)}/login" id="login-form">
<label>Account <input name="login" id="login" autocomplete="username" value="${escapeHtml(login)}"></label>
<label>Password <input name="password" id="password" type="password" autocomplete="current-password"></label>
<button type="submit" id="submit">Sign in</button>
</form>
</body></html>`;
}

async function readForm(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

// The sign-in page's form: a known account (and its password, if it has one) signs in.
provider.use(async (ctx, next) => {
  const match = /^\/interaction\/([^/]+)\/login$/.exec(ctx.path);
  if (!match || ctx.method !== 'POST' || !values.interactive) {
    await next();
    return;
  }
  try {
    const details = await provider.interactionDetails(ctx.req, ctx.res);
    const form = await readForm(ctx.req);
    const login = form.get('login') ?? '';
    const account = accounts.get(login);
    if (!account || (account.password !== undefined && form.get('password') !== account.password)) {
      loginPage(ctx, details.uid, details.params.client_id, login, 'Unknown account or wrong password.');
      return;
    }
    const returnTo = await provider.interactionResult(ctx.req, ctx.res, {
      login: { accountId: login },
    }, { mergeWithLastSubmission: false });
    ctx.status = 303;
    ctx.redirect(returnTo);
  } catch (error) {
    ctx.status = 400;
    ctx.type = 'json';
    ctx.body = { error: 'interaction_failed', error_description: error.message };
  }
});

// The interaction endpoint: signs in (or shows the sign-in page) and consents without a page.
provider.use(async (ctx, next) => {
  const match = /^\/interaction\/([^/]+)$/.exec(ctx.path);
  if (!match || ctx.method !== 'GET') {
    await next();
    return;
  }
  try {
    const details = await provider.interactionDetails(ctx.req, ctx.res);
    const { prompt, params } = details;
    let result;
    if (prompt.name === 'login' && values.interactive) {
      loginPage(ctx, details.uid, params.client_id, params.login_hint ?? '', null);
      return;
    }
    if (prompt.name === 'login') {
      const accountId = params.login_hint || defaultAccount;
      if (!accountId) {
        result = { error: 'login_required', error_description: 'no login_hint and no default account' };
      } else if (!accounts.has(accountId)) {
        result = { error: 'access_denied', error_description: `unknown account ${accountId}` };
      } else {
        result = { login: { accountId } };
      }
    } else if (prompt.name === 'consent') {
      let grant;
      if (details.grantId) {
        grant = await provider.Grant.find(details.grantId);
      }
      if (!grant) {
        grant = new provider.Grant({ accountId: details.session.accountId, clientId: params.client_id });
      }
      const missing = prompt.details;
      if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
      if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
      for (const [indicator, scopes] of Object.entries(missing.missingResourceScopes ?? {})) {
        grant.addResourceScope(indicator, scopes.join(' '));
      }
      const grantId = await grant.save();
      result = { consent: details.grantId ? {} : { grantId } };
    } else {
      result = { error: 'access_denied', error_description: `prompt ${prompt.name} is not supported` };
    }
    const returnTo = await provider.interactionResult(ctx.req, ctx.res, result, {
      mergeWithLastSubmission: true,
    });
    ctx.status = 303;
    ctx.redirect(returnTo);
  } catch (error) {
    ctx.status = 400;
    ctx.type = 'json';
    ctx.body = { error: 'interaction_failed', error_description: error.message };
  }
});

const server = provider.listen(port, values.host, () => {
  process.stdout.write(`${JSON.stringify({
    ready: true, issuer, port, kids: keys.map((key) => key.kid),
  })}\n`);
});
server.on('error', (error) => fail(`listening on ${values.host}:${port}: ${error.message}`));

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => process.exit(0));
}
