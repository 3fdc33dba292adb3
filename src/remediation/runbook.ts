/**
 * The runbook's own command lines, rendered for this cluster (pod, namespace, user), so a dry-run
 * and the audit show exactly what an on-call engineer would have typed.
 */
import type { Config } from '../config.js';

export function namespaceOf(config: Config): string {
  return config.kubernetes?.namespace ?? 'lomash-wood';
}

/** `kubectl exec -it <pod> -n <ns> -- psql -U <user> [-d <db>] -c "<sql>"` as in the runbook. */
export function psqlCommand(config: Config, sql: string, opts: { database?: string; pod?: string; server?: string } = {}): string {
  const primary = config.postgres.primary;
  let pod = opts.pod;
  let url = primary.url;
  if (!pod && opts.server) {
    const replica = config.postgres.replicas.find((r) => hostPort(r.url) === opts.server);
    if (replica) {
      pod = replica.pod ?? 'postgres-replica-0';
      url = replica.url;
    }
  }
  pod ??= primary.pod ?? 'postgres-primary-0';
  const user = decodeURIComponent(new URL(url).username) || 'postgres';
  const db = opts.database && opts.database !== '*' ? ` -d ${opts.database}` : '';
  return `kubectl exec -it ${pod} -n ${namespaceOf(config)} -- psql -U ${user}${db} -c "${sql.replace(/"/g, '\\"')}"`;
}

function hostPort(url: string): string {
  const u = new URL(url);
  return `${u.hostname}:${u.port || '5432'}`;
}
