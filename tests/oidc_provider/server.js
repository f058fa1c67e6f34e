// An OpenID Connect provider (oidc-provider) for hsmca's integration tests; driven by tests/integration/oidc_idp.py.
//
//   node server.js CONFIG.json
//
// CONFIG: {"port", "issuer", "jwks": {"keys": [private JWKs; the first signs]},
//          "clients": [oidc-provider client metadata], "users": {login: {claims}}}
// The login pages below accept any password for a configured login and refuse every other login.
// GET /__test/stats answers {"jwks": N, "discovery": M}: GET requests seen on the JWKS and discovery endpoints.
import { readFileSync } from 'node:fs';

import { Provider } from 'oidc-provider';

const config = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const users = config.users;
const stats = { jwks: 0, discovery: 0 };

const escape = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

function page(ctx, status, title, body) {
  ctx.status = status;
  ctx.type = 'html';
  ctx.body = `<!DOCTYPE html><html><head><meta charset="utf-8"><title>${escape(title)}</title></head>`
    + `<body><h1>${escape(title)}</h1>${body}</body></html>`;
}

const provider = new Provider(config.issuer, {
  clients: config.clients,
  jwks: config.jwks,
  cookies: { keys: ['hsmca-test-idp'] },
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    groups: ['groups'],
  },
  // Scope-requested claims go into the ID token itself, not only to the userinfo endpoint.
  conformIdTokenClaims: false,
  pkce: { methods: ['S256'], required: () => true },
  features: { devInteractions: { enabled: false } },
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  async findAccount(ctx, sub) {
    if (!Object.hasOwn(users, sub)) return undefined;
    return { accountId: sub, claims: async () => ({ ...users[sub], sub }) };
  },
  async renderError(ctx, out) {
    const lines = Object.entries(out).map(([k, v]) => `<p>${escape(k)}: ${escape(v)}</p>`).join('');
    page(ctx, ctx.status, 'OpenID provider error', lines);
  },
});

async function formBody(ctx) {
  const chunks = [];
  for await (const chunk of ctx.req) chunks.push(chunk);
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

// The provider remembers the result and sends the browser back to /auth to continue.
async function finish(ctx, result, merge) {
  const returnTo = await provider.interactionResult(ctx.req, ctx.res, result, { mergeWithLastSubmission: merge });
  ctx.status = 303;
  ctx.redirect(returnTo);
}

async function interaction(ctx, uid, action) {
  const details = await provider.interactionDetails(ctx.req, ctx.res);
  const { prompt, params, session } = details;
  if (details.uid !== uid) ctx.throw(400, 'interaction mismatch');

  if (ctx.method === 'GET' && !action) {
    if (prompt.name === 'login') {
      page(ctx, 200, 'Sign in', `<form method="post" action="/interaction/${escape(uid)}/login">`
        + '<input type="text" name="login" required> <input type="password" name="password">'
        + ' <button type="submit">Sign in</button></form>');
    } else if (prompt.name === 'consent') {
      const scopes = (prompt.details.missingOIDCScope || []).join(' ');
      page(ctx, 200, 'Authorize', `<p>${escape(params.client_id)} asks for: ${escape(scopes)}</p>`
        + `<form method="post" action="/interaction/${escape(uid)}/confirm"><button type="submit">Allow</button></form>`);
    } else {
      ctx.throw(501, `prompt ${prompt.name} not implemented`);
    }
    return;
  }
  if (ctx.method === 'POST' && action === 'login' && prompt.name === 'login') {
    const login = (await formBody(ctx)).get('login') || '';
    if (!Object.hasOwn(users, login)) {
      page(ctx, 403, 'Sign-in refused', `<p>login refused: unknown user ${escape(JSON.stringify(login))}</p>`);
      return;
    }
    await finish(ctx, { login: { accountId: login } }, false);
    return;
  }
  if (ctx.method === 'POST' && action === 'confirm' && prompt.name === 'consent') {
    const grant = details.grantId
      ? await provider.Grant.find(details.grantId)
      : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
    const { missingOIDCScope, missingOIDCClaims, missingResourceScopes } = prompt.details;
    if (missingOIDCScope) grant.addOIDCScope(missingOIDCScope.join(' '));
    if (missingOIDCClaims) grant.addOIDCClaims(missingOIDCClaims);
    for (const [indicator, scopes] of Object.entries(missingResourceScopes || {})) {
      grant.addResourceScope(indicator, scopes.join(' '));
    }
    await finish(ctx, { consent: { grantId: await grant.save() } }, true);
    return;
  }
  ctx.throw(400, `unexpected ${ctx.method} for prompt ${prompt.name}`);
}

provider.use(async (ctx, next) => {
  if (ctx.method === 'GET' && ctx.path === '/__test/stats') {
    ctx.body = stats;
    return;
  }
  if (ctx.method === 'GET' && ctx.path === '/jwks') stats.jwks += 1;
  if (ctx.method === 'GET' && ctx.path === '/.well-known/openid-configuration') stats.discovery += 1;

  const m = ctx.path.match(/^\/interaction\/([\w-]+)(?:\/(login|confirm))?$/);
  if (!m) {
    await next();
    return;
  }
  try {
    await interaction(ctx, m[1], m[2]);
  } catch (err) {
    page(ctx, err.status || err.statusCode || 500, 'Interaction error',
      `<p>${escape(err.message)}${err.error_description ? `: ${escape(err.error_description)}` : ''}</p>`);
  }
});

const server = provider.listen(config.port, '127.0.0.1', () => {
  process.stdout.write(`ready ${config.issuer}\n`);
});

process.on('SIGTERM', () => {
  server.close(() => process.exit(0));
  server.closeAllConnections();
});
