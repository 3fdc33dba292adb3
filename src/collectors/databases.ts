import type { ObservedPrimary } from './collector.js';

/**
 * The databases the per-database collectors look at: the configured list, or when none is
 * configured every connectable non-template database of the observed primary (re-read at most
 * once a minute).
 */
export class DatabaseList {
  private cached: { at: number; names: string[] } | null = null;
  constructor(
    private readonly primary: ObservedPrimary,
    private readonly configured: readonly string[],
    private readonly ttlMs = 60_000,
  ) {}

  get isConfigured(): boolean {
    return this.configured.length > 0;
  }

  async get(): Promise<string[]> {
    if (this.configured.length > 0) return [...this.configured];
    if (this.cached && Date.now() - this.cached.at < this.ttlMs) return this.cached.names;
    const primary = await this.primary();
    const rows = await primary.query<{ datname: string }>(
      'SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate ORDER BY datname',
    );
    this.cached = { at: Date.now(), names: rows.map((r) => r.datname) };
    return this.cached.names;
  }
}
