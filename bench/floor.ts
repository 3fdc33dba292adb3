/**
 * The floor of a scrape (issue "Exporter", speed target): what reading every signal dbpilot reads costs
 * with nothing of dbpilot around it. The statements of one steady-state scrape are recorded as dbpilot
 * sends them (PgServer.query, wrapped while one in-process scrape runs: the topology's probes and every
 * collector's query, with the cached sizes and Prisma counts served from cache as in most scrapes),
 * then replayed, all at once, each on a persistent connection of its own, beside one Redis INFO on a
 * persistent connection. The time from the first send to the last answer is the floor: no HTTP, no
 * exposition, no pool, no connection set-up.
 */
import { Redis } from 'ioredis';
import pg from 'pg';
import { PgServer } from '../src/integrations/postgres.js';
import { summarize, type Summary } from './stats.js';

export interface RecordedStatement {
  url: string;
  sql: string;
  params: unknown[];
}

/** Records what PgServer.query sends until stop() is called. */
export function recordStatements(): { stop(): RecordedStatement[] } {
  const original = PgServer.prototype.query;
  const recorded: RecordedStatement[] = [];
  PgServer.prototype.query = function (this: PgServer, sql: string, params: unknown[] = [], database: string = this.defaultDatabase) {
    const u = new URL((this as unknown as { opts: { url: string } }).opts.url);
    u.pathname = `/${encodeURIComponent(database)}`;
    recorded.push({ url: u.toString(), sql, params });
    return original.call(this, sql, params, database);
  } as typeof original;
  return {
    stop() {
      PgServer.prototype.query = original;
      return recorded;
    },
  };
}

export interface FloorFigures extends Summary {
  statements: number;
  connections: number;
}

/**
 * The floor's connections, opened once: one pg client per recorded statement and one Redis
 * connection. round() sends every statement and the INFO at once and resolves with the milliseconds
 * from the first send to the last answer. With `prepared`, each statement is a named prepared
 * statement on its connection (parsed and planned once, as dbpilot's scrape pools send them since
 * issue 8's second pass); otherwise it is sent as recorded, as text, parsed and planned every round.
 */
export class FloorRound {
  private constructor(
    private readonly statements: RecordedStatement[],
    private readonly clients: pg.Client[],
    private readonly redis: Redis,
    private readonly prepared: boolean,
  ) {}

  static async open(statements: RecordedStatement[], redisUrl: string, opts: { prepared?: boolean } = {}): Promise<FloorRound> {
    const clients = statements.map((s) => new pg.Client({ connectionString: s.url, application_name: 'bench_floor' }));
    const redis = new Redis(redisUrl, { lazyConnect: true, maxRetriesPerRequest: 1 });
    const f = new FloorRound(statements, clients, redis, opts.prepared === true);
    try {
      await Promise.all([...clients.map((c) => c.connect()), redis.connect()]);
    } catch (err) {
      await f.close();
      throw err;
    }
    return f;
  }

  get connections(): number {
    return this.clients.length + 1;
  }

  async round(): Promise<number> {
    const t0 = performance.now();
    await Promise.all([
      ...this.statements.map((s, k) =>
        this.prepared ? this.clients[k]!.query({ name: `floor_${k}`, text: s.sql, values: s.params }) : this.clients[k]!.query(s.sql, s.params),
      ),
      this.redis.info(),
    ]);
    return performance.now() - t0;
  }

  async close(): Promise<void> {
    await Promise.allSettled(this.clients.map((c) => c.end()));
    this.redis.disconnect();
  }
}

/** Replays the statements (and one Redis INFO) back to back, `warmup` + `rounds` times; the timed rounds' summary. */
export async function measureFloor(statements: RecordedStatement[], redisUrl: string, warmup: number, rounds: number, opts: { prepared?: boolean } = {}): Promise<FloorFigures> {
  const floor = await FloorRound.open(statements, redisUrl, opts);
  try {
    const ms: number[] = [];
    for (let i = 0; i < warmup + rounds; i++) {
      const t = await floor.round();
      if (i >= warmup) ms.push(t);
    }
    return { ...summarize(ms), statements: statements.length, connections: floor.connections };
  } finally {
    await floor.close();
  }
}
