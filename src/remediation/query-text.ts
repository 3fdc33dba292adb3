/**
 * Query text as dbpilot shows it in the audit and a page (slow-queries, replication-lag): literals
 * removed, so no password, connection string or customer value leaves the database in it.
 */
import { safeMessage } from '../errors.js';

/** Characters of a query kept in the audit and a page. */
export const QUERY_TEXT_MAX = 200;

/**
 * Keeps secrets out of the audit and the page: every string literal ('…', E'…', $tag$…$tag$) becomes
 * '?' — passwords, dblink connection strings, subscription conninfo — and any URL left is redacted.
 */
export function redactQuery(query: string): string {
  const cleaned = safeMessage(
    query
      .replace(/(\$[A-Za-z_0-9]*\$)[\s\S]*?(\1|$)/g, "'?'")
      .replace(/[eE]?'(?:[^'\\]|''|\\.)*('|$)/g, "'?'"),
  )
    .replace(/\s+/g, ' ')
    .trim();
  return cleaned.length > QUERY_TEXT_MAX ? `${cleaned.slice(0, QUERY_TEXT_MAX - 1)}…` : cleaned;
}
