import type { PgServer } from '../integrations/postgres.js';

/**
 * The databases the per-database collectors look at: the configured list, or when none is
 * configured every connectable non-template database (re-read at most once a minute).
 */
export class DatabaseList {
  private cached: { at: number; names: string[] } | null = null;
  constructor(
    private readonly primary: PgServer,
    private readonly configured: readonly string[],
    private readonly ttlMs = 60_000,
  ) {}

  get isConfigured(): boolean {
    return this.configured.length > 0;
  }

  async get(): Promise<string[]> {
    if (this.configured.length > 0) return [...this.configured];
    if (this.cached && Date.now() - this.cached.at < this.ttlMs) return this.cached.names;
    const rows = await this.primary.query<{ datname: string }>(
      'SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate ORDER BY datname',
    );
    this.cached = { at: Date.now(), names: rows.map((r) => r.datname) };
    return this.cached.names;
  }
}
