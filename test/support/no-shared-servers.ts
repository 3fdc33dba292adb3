/**
 * The configuration's defaults point at the machine's own PostgreSQL (127.0.0.1:5432) and Redis
 * (127.0.0.1:6379): servers the tests must never touch (see global-setup.ts). The tests'
 * configuration helpers call refuseSharedServers() on the document they are about to use, so a test
 * that forgets a URL — or names one of those ports — fails at once, naming the field, instead of
 * quietly running against (and perhaps changing) the shared servers.
 */

/** Ports of the machine's shared servers, by URL scheme: also what a URL without a port means. */
const SHARED_PORT: Readonly<Record<string, number>> = {
  'postgres:': 5432,
  'postgresql:': 5432,
  'redis:': 6379,
  'rediss:': 6379,
};

/** What src/config.ts uses when the key is missing. */
const DEFAULT_PRIMARY_URL = 'postgres://postgres@127.0.0.1:5432/postgres';
const DEFAULT_REDIS_URL = 'redis://127.0.0.1:6379';

type Plain = Record<string, unknown>;
const isPlain = (v: unknown): v is Plain => typeof v === 'object' && v !== null && !Array.isArray(v);

/** The port a URL connects to (the scheme's default when it names none); null when it is no URL of a known scheme. */
function portOf(url: string): number | null {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    return null; // not a URL: parseConfig refuses it with its own message
  }
  const fallback = SHARED_PORT[u.protocol];
  if (fallback === undefined) return null;
  // libpq also reads the port from the query string (postgres://u@h/db?port=5432).
  const explicit = u.port || u.searchParams.get('port') || '';
  return explicit === '' ? fallback : Number(explicit);
}

/**
 * Throws when the postgres primary or replica URLs or the redis URL of a configuration document (or
 * of a parsed Config) — including the defaults a missing key would give — connect to port 5432 or
 * 6379. `where` names the helper in the message.
 */
export function refuseSharedServers(doc: unknown, where = 'test configuration'): void {
  const root = isPlain(doc) ? doc : {};
  const postgres = isPlain(root.postgres) ? root.postgres : {};
  const primary = isPlain(postgres.primary) ? postgres.primary : {};
  const redis = isPlain(root.redis) ? root.redis : {};
  const urls: [field: string, url: unknown, defaulted: boolean][] = [
    ['postgres.primary.url', primary.url ?? DEFAULT_PRIMARY_URL, primary.url === undefined],
    ...(Array.isArray(postgres.replicas) ? postgres.replicas : []).map(
      (r, i): [string, unknown, boolean] => [`postgres.replicas[${i}].url`, isPlain(r) ? r.url : undefined, false],
    ),
    ['redis.url', redis.url ?? DEFAULT_REDIS_URL, redis.url === undefined],
  ];
  for (const [field, url, defaulted] of urls) {
    if (typeof url !== 'string') continue; // not a string: parseConfig names the field itself
    const port = portOf(url);
    if (port === 5432 || port === 6379) {
      throw new Error(
        `${where}: ${field} ${defaulted ? `is missing, so it would default to ${url}` : `is ${url}`} — port ${port} is the machine's own ` +
          `${port === 5432 ? 'PostgreSQL' : 'Redis'}, which tests must never use; point it at a server the tests started (inject('pgPrimaryUrl'), startPgCluster(), startRedis()).`,
      );
    }
  }
}
