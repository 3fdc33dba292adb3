/**
 * Section "scrape" (issue "Exporter", part 5): what one Prometheus scrape of dbpilot costs, against
 * postgres_exporter + redis_exporter, the two exporters it replaces, on the same data in the same run.
 *
 * A. dbpilot in-process (startService, the exporter only): per-collector durations and statement
 *    counts from CollectorRegistry.last, and a cross-check of those counts against pg_stat_database,
 *    the meter used for every exporter below.
 * B. Cost, one exporter at a time, each as a child process (dbpilot is `serve`, configured through the
 *    DBPILOT_* environment): warm-up, N timed sequential scrapes with their SQL transactions, server
 *    CPU and exporter CPU per scrape; then on to 1,000 scrapes for RSS and its growth.
 * C. Latency, all exporters running, scraped in turn (round i: dbpilot, postgres_exporter,
 *    redis_exporter, …, rotating), so load from anything else on the machine hits all of them alike:
 *    N scrapes each → p50 / p90 / p99. These are the figures the targets are judged on. The floor
 *    (bench/floor.ts) takes its turn in the same rotation, so the floor target compares two figures
 *    taken under the same conditions; it is also measured back to back afterwards, for information.
 * D. Optionally (--load-seconds > 0) 10 concurrent scrapers per exporter with autocannon, where
 *    dbpilot's shared in-flight collection shows.
 */
import fs from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import Table from 'cli-table3';
import { parseConfig } from '../src/config.js';
import { createLogger } from '../src/logger.js';
import { startService } from '../src/server.js';
import { freePort } from '../test/support/ports.js';
import { onCleanup } from './cleanup.js';
import { binaryVersion, cleanEnv, explain, startChild, which, type ChildSpec, type RunningChild } from './children.js';
import { METER_DB, type Dataset } from './dataset.js';
import { dbpilotCommand, forceGc, gcPreloadArgs, type DbpilotRuntime } from './dbpilot-build.js';
import { FloorRound, measureFloor, recordStatements, type FloorFigures, type RecordedStatement } from './floor.js';
import { countSamples, sampleValue, samplesOf, Scraper, SCRAPE_HEADERS } from './http.js';
import { Meter, type ServerCpu } from './meter.js';
import { cpuSeconds, rssBytes } from './procs.js';
import { intOption, UsageError, type Section, type SectionContext, type SectionResult, type TargetCheck } from './section.js';
import { fmt, MiB, round, summarize, type Summary } from './stats.js';

/** p50 of the two peers measured on this machine earlier (issue "Exporter"). */
const REFERENCE_PEERS_MS = { postgres_exporter: 45.1, redis_exporter: 5.3 };
const TARGET_RATIO = 0.25;
/** The issue's second speed target: within 2 × of the floor (bench/floor.ts). */
const FLOOR_RATIO = 2;
const TARGET_RSS_BYTES = 100 * MiB;
/** RSS wanders with GC; more than this between scrape 200 and 1,000 counts as growth. */
const GROWTH_TOLERANCE_BYTES = 5 * MiB;
const RSS_MARK = 200;
const LOAD_CONNECTIONS = 10;

type TargetId = 'dbpilot' | 'postgres_exporter' | 'postgres_exporter_auto' | 'redis_exporter';

interface CostFigures {
  /** Scrapes the exporter served in total (readiness probe + warm-up + timed + RSS scrapes). */
  served: number;
  /** Latency of the timed scrapes while this exporter ran alone (phase B). */
  aloneLatencyMs: Summary;
  wireBytes: number;
  bodyBytes: number;
  samples: number;
  /** pg_stat_database transactions (primary + replica) per scrape served. */
  sqlPerScrape: number;
  /** Server CPU per timed scrape, ms, idle use subtracted. */
  serverCpuMs: ServerCpu;
  exporterCpuMs: number;
  rss: {
    afterWarmup: number | null;
    atMark: number | null;
    atEnd: number | null;
    endScrape: number;
    /** dbpilot: RSS and V8 heap used right after a forced full GC, at the mark and at the end. */
    afterGc?: { atMark: number | null; atEnd: number | null; heapAtMark: number | null; heapAtEnd: number | null };
    /** End minus mark: after forced GC when measured (dbpilot), else as read. */
    growth: number | null;
    growthBasis: 'after-gc' | 'raw';
  };
  /** RSS (and for dbpilot the V8 heap used, from its own /metrics) every 100 scrapes. */
  series: { scrape: number; rss: number | null; heapUsed?: number | null }[];
  warnings: string[];
}

interface ExporterFigures extends CostFigures {
  id: TargetId;
  label: string;
  version: string;
  /** Phase C: scraped in turn with the others. The headline figure. */
  latencyMs: Summary;
}

interface CollectorFigures {
  name: string;
  p50Ms: number;
  p90Ms: number;
  maxMs: number;
  statementsPerScrape: number;
  failures: number;
}

interface InProcessFigures {
  latencyMs: Summary;
  collectors: CollectorFigures[];
  /** Registry statements per timed scrape (pg_sizes served from cache). */
  statementsPerScrape: number;
  /** pg_sizes' refresh: statements per refresh (every sizeRefreshSeconds). */
  sizeRefreshStatements: number;
  sizeRefreshSeconds: number;
  check: { scrapes: number; registryStatements: number; connections: number; transactions: number };
  /** The statements of one steady-state scrape, for the floor (not in the JSON). */
  recorded?: RecordedStatement[];
}

interface LoadFigures {
  id: TargetId;
  label: string;
  connections: number;
  seconds: number;
  requests: number;
  requestsPerSecond: number;
  latencyMs: { p50: number; p90: number; p99: number };
  sqlPerRequest: number;
  non2xx: number;
  errors: number;
}

interface ScrapeFigures {
  dataset: { buildSeconds: number; timings: Record<string, number>; totals: Dataset['totals'] };
  plan: { warmup: number; scrapes: number; rssScrapes: number; dbpilotRuntime: DbpilotRuntime };
  machine: { cpus: number; loadAvgStart: number[]; loadAvgEnd: number[] };
  idleServerCpu: ServerCpu;
  inProcess: InProcessFigures;
  /**
   * Every signal of one scrape read concurrently on persistent connections, nothing else: taking its
   * turn in phase C's rotation with the exporters, the floor the target uses.
   */
  floorInTurn: FloorFigures;
  /** The same in turn, each statement prepared on its connection, as dbpilot's scrape pools send them (information). */
  floorPreparedInTurn: FloorFigures;
  /** The same rounds back to back, after phase C (information: a round never follows an idle gap). */
  floor: FloorFigures;
  /** Back to back, each statement prepared on its connection, as dbpilot's scrape pools send them (information). */
  floorPrepared: FloorFigures;
  exporters: ExporterFigures[];
  peers: { p50SumMs: number | null; ratio: number | null; referenceSumMs: number; referenceRatio: number };
  load: LoadFigures[];
  notes: string[];
}

interface Target {
  id: TargetId;
  label: string;
  version: string;
  spec: (port: number) => ChildSpec;
  /** Sanity checks on a scrape body; each returned string is a warning. */
  check: (body: string) => string[];
  rssScrapes: number;
  /** Where the child writes its memory figures after a forced GC (dbpilot only). */
  gcFile?: string;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const progress = (s: string) => process.stderr.isTTY && process.stderr.write(`\r\x1b[K  ${s}`);
const progressDone = () => process.stderr.isTTY && process.stderr.write('\r\x1b[K');

// ---------------------------------------------------------------------------------------------------
// A. dbpilot in-process: the collector breakdown

async function runInProcess(ctx: SectionContext, ds: Dataset, meter: Meter, warmup: number, scrapes: number): Promise<InProcessFigures> {
  const config = parseConfig(
    {
      listen: '127.0.0.1:0',
      logLevel: 'warn',
      postgres: {
        primary: { url: ds.cluster.primary.url('postgres') },
        replicas: [{ url: ds.cluster.replicas[0]!.url('postgres') }],
        databases: [...ds.databases],
      },
      redis: { url: ds.redis.url },
      store: { path: path.join(ctx.workDir, 'dbpilot-inprocess.sqlite') },
    },
    {},
  );
  const x0 = await meter.settledTransactions();
  const service = await startService(config, createLogger('warn'));
  const stop = onCleanup('dbpilot (in-process)', () => service.close());
  const scraper = new Scraper(`http://127.0.0.1:${service.address.port}/metrics`);
  const registry = service.runtime.exporter.registry;
  const durations = new Map<string, number[]>();
  const statements = new Map<string, number>();
  const failures = new Map<string, number>();
  const latencies: number[] = [];
  let registryStatements = 0;
  let sizeRefreshStatements = 0;
  let served = 0;
  let connections = 0;
  let recorded: RecordedStatement[] = [];
  try {
    for (let i = 0; i < warmup + scrapes; i++) {
      // The first timed scrape's statements are the floor's (the caches are warm by then).
      const recorder = i === warmup ? recordStatements() : null;
      const r = await scraper.scrape();
      if (recorder) recorded = recorder.stop();
      served++;
      if (r.status !== 200) throw new Error(`dbpilot /metrics answered ${r.status}`);
      for (const [name, res] of registry.last) {
        registryStatements += res.statements;
        if (name === 'pg_sizes' && res.statements > 0) sizeRefreshStatements = res.statements;
        if (i < warmup) continue;
        (durations.get(name) ?? durations.set(name, []).get(name)!).push(res.durationSeconds * 1000);
        statements.set(name, (statements.get(name) ?? 0) + res.statements);
        if (!res.success) failures.set(name, (failures.get(name) ?? 0) + 1);
      }
      if (i >= warmup) latencies.push(r.ms);
    }
    connections = await meter.connections('dbpilot');
  } finally {
    scraper.close();
    await stop();
  }
  const x1 = await meter.settledTransactions();
  const collectors: CollectorFigures[] = [...durations].map(([name, d]) => {
    const s = summarize(d);
    return { name, p50Ms: s.p50, p90Ms: s.p90, maxMs: s.max, statementsPerScrape: (statements.get(name) ?? 0) / scrapes, failures: failures.get(name) ?? 0 };
  });
  collectors.sort((a, b) => b.p50Ms - a.p50Ms);
  return {
    latencyMs: summarize(latencies),
    collectors,
    statementsPerScrape: collectors.reduce((a, c) => a + c.statementsPerScrape, 0),
    sizeRefreshStatements,
    sizeRefreshSeconds: config.postgres.sizeRefreshSeconds,
    check: { scrapes: served, registryStatements, connections, transactions: x1 - x0 },
    recorded,
  };
}

// ---------------------------------------------------------------------------------------------------
// The exporters

function targets(
  ctx: SectionContext,
  ds: Dataset,
  opts: { peers: boolean; autoDiscover: boolean; rssScrapes: number; runtime: DbpilotRuntime },
  notes: string[],
): { list: Target[]; runtime: DbpilotRuntime } {
  const list: Target[] = [];
  const dbp = dbpilotCommand(ctx.root, ctx.workDir, opts.runtime, ctx.log);
  if (dbp.note) notes.push(dbp.note);
  const gcFile = path.join(ctx.workDir, 'dbpilot-gc.json');
  const gcArgs = gcPreloadArgs(ctx.workDir);
  list.push({
    gcFile,
    id: 'dbpilot',
    label: 'dbpilot',
    version: `0.1.0 serve (${dbp.runtime === 'dist' ? `compiled, node ${dbp.args.slice(0, -2).join(' ') || 'without flags'}` : 'tsx'}, node ${process.version})`,
    rssScrapes: opts.rssScrapes,
    spec: (port) => {
      fs.rmSync(gcFile, { force: true });
      return {
        name: 'dbpilot',
        port,
        cmd: dbp.cmd,
        args: [...gcArgs, ...dbp.args],
        // A cwd without a dbpilot.yaml: the configuration is the documented environment overrides only.
        cwd: ctx.workDir,
        env: cleanEnv({
          DBPILOT_LISTEN: `127.0.0.1:${port}`,
          DBPILOT_PRIMARY_URL: ds.cluster.primary.url('postgres'),
          DBPILOT_REPLICA_URLS: ds.cluster.replicas[0]!.url('postgres'),
          DBPILOT_REDIS_URL: ds.redis.url,
          DBPILOT_DATABASES: ds.databases.join(','),
          DBPILOT_LOG_LEVEL: 'warn',
          DBPILOT_STORE_PATH: path.join(ctx.workDir, 'dbpilot.sqlite'),
          DBPILOT_WEBHOOK_TOKEN: 'bench-webhook-token-not-a-secret',
          NODE_ENV: 'production',
          BENCH_GC_FILE: gcFile,
        }),
      };
    },
    check: (body) => {
      const w: string[] = [];
      if (sampleValue(body, 'pg_up', { role: 'primary' }) !== 1) w.push('pg_up{role="primary"} is not 1');
      if (sampleValue(body, 'pg_up', { role: 'replica' }) !== 1) w.push('pg_up{role="replica"} is not 1');
      if (sampleValue(body, 'redis_up') !== 1) w.push('redis_up is not 1');
      for (const [labels, v] of samplesOf(body, 'dbpilot_collector_success')) if (v !== 1) w.push(`dbpilot_collector_success${labels} = ${v}`);
      return w;
    },
  });
  if (!opts.peers) return { list, runtime: dbp.runtime };

  const pgExp = which('prometheus-postgres-exporter');
  if (pgExp) {
    const version = /version (\S+)/.exec(binaryVersion(pgExp) ?? '')?.[1] ?? 'unknown';
    const dsn = (app: string) => `${ds.cluster.primary.url('postgres')}?sslmode=disable&application_name=${app}`;
    const pgCheck = (body: string) => (sampleValue(body, 'pg_up') === 1 ? [] : ['pg_up is not 1']);
    list.push({
      id: 'postgres_exporter',
      label: 'postgres_exporter',
      version,
      rssScrapes: opts.rssScrapes,
      spec: (port) => ({
        name: 'postgres_exporter',
        port,
        cmd: pgExp,
        args: [`--web.listen-address=127.0.0.1:${port}`, '--log.level=warn'],
        env: cleanEnv({ DATA_SOURCE_NAME: dsn('bench_pg_exporter') }),
      }),
      check: pgCheck,
    });
    if (opts.autoDiscover) {
      list.push({
        id: 'postgres_exporter_auto',
        label: 'postgres_exporter --auto-discover-databases',
        version,
        // Only the timed scrapes: the 1,000-scrape RSS run is done for the default configuration.
        rssScrapes: 0,
        spec: (port) => ({
          name: 'postgres_exporter_auto',
          port,
          cmd: pgExp,
          args: [`--web.listen-address=127.0.0.1:${port}`, '--log.level=warn', '--auto-discover-databases', `--exclude-databases=${METER_DB}`],
          env: cleanEnv({ DATA_SOURCE_NAME: dsn('bench_pg_exporter_auto') }),
        }),
        check: pgCheck,
      });
    }
  } else {
    notes.push('prometheus-postgres-exporter is not installed (apt-get install -y prometheus-postgres-exporter): the target uses the reference figures');
  }

  const redisExp = which('prometheus-redis-exporter');
  if (redisExp) {
    const version = /(\d+\.\d+\.\d+)/.exec(binaryVersion(redisExp, '-version') ?? '')?.[1] ?? 'unknown';
    list.push({
      id: 'redis_exporter',
      label: 'redis_exporter',
      version,
      rssScrapes: opts.rssScrapes,
      spec: (port) => ({
        name: 'redis_exporter',
        port,
        cmd: redisExp,
        args: [`--redis.addr=${ds.redis.url}`, `--web.listen-address=127.0.0.1:${port}`],
        env: cleanEnv({}),
      }),
      check: (body) => (sampleValue(body, 'redis_up') === 1 ? [] : ['redis_up is not 1']),
    });
  } else {
    notes.push('prometheus-redis-exporter is not installed (apt-get install -y prometheus-redis-exporter): the target uses the reference figures');
  }
  return { list, runtime: dbp.runtime };
}

async function launch(ctx: SectionContext, t: Target): Promise<RunningChild> {
  // Another process may take the "free" port before the exporter binds it: retry on a new one.
  for (let attempt = 1; ; attempt++) {
    try {
      return await startChild(t.spec(await freePort()), path.join(ctx.workDir, 'logs'));
    } catch (err) {
      if (attempt >= 3 || !/address already in use|EADDRINUSE/i.test((err as Error).message)) throw err;
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// B. Cost: one exporter at a time

async function runCost(ctx: SectionContext, meter: Meter, t: Target, warmup: number, scrapes: number): Promise<CostFigures> {
  const x0 = await meter.settledTransactions();
  const child = await launch(ctx, t);
  const scraper = new Scraper(child.url);
  try {
    return await costOf(meter, t, child, scraper, warmup, scrapes, x0);
  } catch (err) {
    throw explain(child, err);
  } finally {
    scraper.close();
    await child.stop();
  }
}

async function costOf(meter: Meter, t: Target, child: RunningChild, scraper: Scraper, warmup: number, scrapes: number, x0: number): Promise<CostFigures> {
  const warnings: string[] = [];
  let served = 1; // the readiness probe was a full scrape
  let last = { wireBytes: 0, body: '' };
  for (let i = 0; i < Math.max(1, warmup); i++) {
    const r = await scraper.scrape({ body: i === Math.max(1, warmup) - 1 });
    served++;
    if (r.status !== 200) throw new Error(`${t.label} /metrics answered ${r.status}`);
    if (r.body !== undefined) last = { wireBytes: r.wireBytes, body: r.body };
  }
  warnings.push(...t.check(last.body));
  const rssAfterWarmup = rssBytes(child.pid);

  const total = Math.max(scrapes, t.rssScrapes);
  const mark = Math.min(RSS_MARK, total);
  const latencies: number[] = [];
  const cpu0 = meter.serverCpu();
  const e0 = cpuSeconds(child.pid) ?? Number.NaN;
  const t0 = performance.now();
  let cpu: { server: ServerCpu; exporter: number } | null = null;
  let rssMark: number | null = null;
  const gc = { atMark: null as number | null, atEnd: null as number | null, heapAtMark: null as number | null, heapAtEnd: null as number | null };
  const series: CostFigures['series'] = [];
  for (let i = 1; i <= total; i++) {
    const checkpoint = i % 100 === 0 || i === total;
    const wantBody = t.id === 'dbpilot' && checkpoint;
    const r = await scraper.scrape({ body: wantBody });
    served++;
    if (r.status !== 200) throw new Error(`${t.label} /metrics answered ${r.status} on scrape ${i}`);
    if (i <= scrapes) latencies.push(r.ms);
    if (i === scrapes) {
      const net = meter.netCpu(cpu0, meter.serverCpu(), (performance.now() - t0) / 1000);
      const e1 = cpuSeconds(child.pid) ?? Number.NaN;
      cpu = {
        server: { primary: (net.primary * 1000) / scrapes, replica: (net.replica * 1000) / scrapes, redis: (net.redis * 1000) / scrapes },
        exporter: ((e1 - e0) * 1000) / scrapes,
      };
    }
    if (checkpoint) {
      series.push({ scrape: i, rss: rssBytes(child.pid), ...(r.body ? { heapUsed: sampleValue(r.body, 'nodejs_heap_size_used_bytes') ?? null } : {}) });
    }
    if (i === mark || i === total) {
      const raw = rssBytes(child.pid);
      const after = t.gcFile ? await forceGc(child.pid, t.gcFile) : null;
      const afterRss = after ? rssBytes(child.pid) : null;
      if (t.gcFile && !after) warnings.push(`no answer to the forced-GC signal at scrape ${i}`);
      if (i === mark) {
        rssMark = raw;
        gc.atMark = afterRss;
        gc.heapAtMark = after?.heapUsed ?? null;
      }
      if (i === total) {
        gc.atEnd = afterRss;
        gc.heapAtEnd = after?.heapUsed ?? null;
      }
    }
    if (i % 50 === 0) progress(`${t.label}: ${i}/${total}`);
  }
  progressDone();
  const rssEnd = series.at(-1)?.rss ?? rssBytes(child.pid);
  const measured = t.rssScrapes > RSS_MARK;
  const gcGrowth = measured && gc.atMark !== null && gc.atEnd !== null ? gc.atEnd - gc.atMark : null;
  const rawGrowth = measured && rssMark !== null && rssEnd !== null ? rssEnd - rssMark : null;

  await child.stop();
  const x1 = await meter.settledTransactions();
  return {
    served,
    aloneLatencyMs: summarize(latencies),
    wireBytes: last.wireBytes,
    bodyBytes: Buffer.byteLength(last.body),
    samples: countSamples(last.body),
    sqlPerScrape: (x1 - x0) / served,
    serverCpuMs: cpu!.server,
    exporterCpuMs: cpu!.exporter,
    rss: {
      afterWarmup: rssAfterWarmup,
      atMark: rssMark,
      atEnd: rssEnd,
      endScrape: total,
      ...(t.gcFile ? { afterGc: gc } : {}),
      growth: gcGrowth ?? rawGrowth,
      growthBasis: gcGrowth !== null ? 'after-gc' : 'raw',
    },
    series,
    warnings,
  };
}

// ---------------------------------------------------------------------------------------------------
// C. Latency: every exporter running, scraped in turn

/**
 * Phase C. Each of `floors` (bench/floor.ts) takes a turn in the same rotation, as one more
 * participant: its figure is then taken under the same conditions as the exporters' (each turn after
 * the others' work, the machine's processes woken from the same idle gaps), which is what the floor
 * target compares. Back to back (measureFloor), the servers and the client never go idle between
 * rounds, and every round is cheaper than a turn can be.
 */
async function runInterleaved(
  ctx: SectionContext,
  list: Target[],
  warmup: number,
  scrapes: number,
  floors: FloorRound[] = [],
): Promise<{ latency: Map<TargetId, Summary>; floorsInTurn: Summary[] }> {
  const running: { t: Target; child: RunningChild; scraper: Scraper; ms: number[] }[] = [];
  const floorMs: number[][] = floors.map(() => []);
  try {
    for (const t of list) {
      const child = await launch(ctx, t);
      running.push({ t, child, scraper: new Scraper(child.url), ms: [] });
    }
    type Turn = (timed: boolean) => Promise<void>;
    const turns: Turn[] = running.map((r) => async (timed) => {
      const res = await r.scraper.scrape().catch((err: unknown) => {
        throw explain(r.child, err);
      });
      if (res.status !== 200) throw new Error(`${r.t.label} /metrics answered ${res.status}`);
      if (timed) r.ms.push(res.ms);
    });
    floors.forEach((floor, i) => {
      turns.push(async (timed) => {
        const ms = await floor.round();
        if (timed) floorMs[i]!.push(ms);
      });
    });
    for (let i = 0; i < warmup; i++) for (const turn of turns) await turn(false);
    for (let round = 0; round < scrapes; round++) {
      for (let k = 0; k < turns.length; k++) await turns[(round + k) % turns.length]!(true);
      if ((round + 1) % 20 === 0) progress(`round ${round + 1}/${scrapes}`);
    }
    progressDone();
    return { latency: new Map(running.map((r) => [r.t.id, summarize(r.ms)])), floorsInTurn: floorMs.map((ms) => summarize(ms)) };
  } finally {
    for (const r of running) r.scraper.close();
    await Promise.all(running.map((r) => r.child.stop()));
  }
}

// ---------------------------------------------------------------------------------------------------
// D. Concurrent scrapers (autocannon; it has no type declarations, so the little used is typed here)

interface AutocannonResult {
  requests: { total: number };
  latency: { p50: number; p90: number; p99: number };
  duration: number;
  non2xx: number;
  errors: number;
}
type Autocannon = (opts: { url: string; connections: number; duration: number; headers: Record<string, string>; timeout: number }) => Promise<AutocannonResult>;

async function runLoad(ctx: SectionContext, meter: Meter, t: Target, seconds: number): Promise<LoadFigures> {
  const autocannon = createRequire(import.meta.url)('autocannon') as Autocannon;
  const x0 = await meter.settledTransactions();
  const child = await launch(ctx, t);
  try {
    const r = await autocannon({ url: child.url, connections: LOAD_CONNECTIONS, duration: seconds, headers: { ...SCRAPE_HEADERS }, timeout: 15 });
    await child.stop();
    const x1 = await meter.settledTransactions();
    return {
      id: t.id,
      label: t.label,
      connections: LOAD_CONNECTIONS,
      seconds,
      requests: r.requests.total,
      requestsPerSecond: r.requests.total / r.duration,
      latencyMs: { p50: r.latency.p50, p90: r.latency.p90, p99: r.latency.p99 },
      sqlPerRequest: (x1 - x0) / (r.requests.total + 1), // + the readiness probe
      non2xx: r.non2xx,
      errors: r.errors,
    };
  } finally {
    await child.stop();
  }
}

// ---------------------------------------------------------------------------------------------------
// Report

const mib = (b: number | null | undefined) => (b === null || b === undefined || !Number.isFinite(b) ? '–' : (b / MiB).toFixed(1));
const signedMib = (b: number | null | undefined) => (b === null || b === undefined ? '–' : `${b >= 0 ? '+' : ''}${(b / MiB).toFixed(1)}`);

function printReport(f: ScrapeFigures): void {
  const out = (s = '') => process.stdout.write(`${s}\n`);
  const style = { head: [], border: [] };

  out();
  out(
    `Dataset: ${f.dataset.totals.tables} tables, ${f.dataset.totals.rows.toLocaleString('en')} rows, ${mib(f.dataset.totals.databaseBytes)} MiB in 8 databases; ` +
      `${f.dataset.totals.redisKeys.toLocaleString('en')} Redis keys; built in ${fmt(f.dataset.buildSeconds, 1)} s.`,
  );
  out(
    `Machine: ${f.machine.cpus} CPUs, load average ${f.machine.loadAvgStart.map((x) => x.toFixed(2)).join(' ')} at the start, ` +
      `${f.machine.loadAvgEnd.map((x) => x.toFixed(2)).join(' ')} at the end${Math.max(f.machine.loadAvgStart[0]!, f.machine.loadAvgEnd[0]!) > f.machine.cpus / 2 ? ' (busy: latencies are noisy; the interleaved figures keep the comparison fair)' : ''}.`,
  );

  out();
  out(`A. dbpilot collectors (in-process exporter, ${f.inProcess.latencyMs.n} scrapes; CollectorRegistry.last), slowest first:`);
  const ct = new Table({ style, head: ['collector', 'p50 ms', 'p90 ms', 'max ms', 'SQL/scrape', 'failures'] });
  for (const c of f.inProcess.collectors) ct.push([c.name, fmt(c.p50Ms, 2), fmt(c.p90Ms, 2), fmt(c.maxMs, 2), fmt(c.statementsPerScrape, 2), String(c.failures)]);
  out(ct.toString());
  const ck = f.inProcess.check;
  out(
    `  scrape p50 ${fmt(f.inProcess.latencyMs.p50, 2)} ms; ${fmt(f.inProcess.statementsPerScrape, 1)} statements per scrape ` +
      `(+ ${f.inProcess.sizeRefreshStatements} per pg_sizes refresh, at most every ${f.inProcess.sizeRefreshSeconds} s, served from cache in between).`,
  );
  out(
    `  meter check: registry ${ck.registryStatements} statements in ${ck.scrapes} scrapes + ${ck.connections} connection start-ups = ` +
      `${ck.registryStatements + ck.connections}; pg_stat_database counted ${ck.transactions} transactions.`,
  );
  out(
    `  floor: the ${f.floorInTurn.statements} statements of one scrape and a Redis INFO, all at once on ${f.floorInTurn.connections} persistent connections, ` +
      `taking its turn in phase C's rotation, ${f.floorInTurn.n} rounds: p50 ${fmt(f.floorInTurn.p50, 2)} ms, p90 ${fmt(f.floorInTurn.p90, 2)} ms, p99 ${fmt(f.floorInTurn.p99, 2)} ms (the target's); ` +
      `prepared on their connections, as dbpilot sends them (information): p50 ${fmt(f.floorPreparedInTurn.p50, 2)} ms, p90 ${fmt(f.floorPreparedInTurn.p90, 2)} ms.`,
  );
  out(
    `  the same rounds back to back, after phase C (information: each round right after the last, which no scrape in C is): ` +
      `p50 ${fmt(f.floor.p50, 2)} ms, p90 ${fmt(f.floor.p90, 2)} ms; prepared on their connections, as dbpilot sends them: ` +
      `p50 ${fmt(f.floorPrepared.p50, 2)} ms, p90 ${fmt(f.floorPrepared.p90, 2)} ms.`,
  );

  out();
  out(
    `B+C. Exporters as child processes. Latency (C): all running, scraped in turn, ${f.plan.scrapes} scrapes each after ${f.plan.warmup} warm-up, ` +
      `one keep-alive connection, Prometheus' Accept/gzip headers. Cost (B): each alone; CPU per scrape with idle use subtracted; ` +
      `SQL = pg_stat_database transactions (primary + replica) per scrape; RSS after ${RSS_MARK} and ${f.plan.rssScrapes} scrapes.`,
  );
  const head = ['exporter', 'p50 ms', 'p90 ms', 'p99 ms', 'p50 alone', 'SQL/scrape', 'PG CPU ms', 'Redis CPU ms', 'own CPU ms', 'RSS MiB', `RSS ${RSS_MARK}→end`, 'samples', 'KiB wire'];
  const t = new Table({ style, head });
  const row = (e: ExporterFigures) => [
    e.label,
    fmt(e.latencyMs.p50, 2),
    fmt(e.latencyMs.p90, 2),
    fmt(e.latencyMs.p99, 2),
    fmt(e.aloneLatencyMs.p50, 2),
    fmt(e.sqlPerScrape, 1),
    fmt(e.serverCpuMs.primary + e.serverCpuMs.replica, 2),
    fmt(e.serverCpuMs.redis, 3),
    fmt(e.exporterCpuMs, 2),
    `${mib(e.rss.atEnd)} @${e.rss.endScrape}`,
    signedMib(e.rss.growth),
    String(e.samples),
    fmt(e.wireBytes / 1024, 1),
  ];
  const by = (id: TargetId) => f.exporters.find((e) => e.id === id);
  const dbp = by('dbpilot');
  const pge = by('postgres_exporter');
  const rde = by('redis_exporter');
  const auto = by('postgres_exporter_auto');
  for (const e of [dbp, pge, rde]) if (e) t.push(row(e));
  if (pge && rde) {
    const sum = (g: (e: ExporterFigures) => number) => g(pge) + g(rde);
    t.push([
      'postgres_exporter + redis_exporter',
      fmt(sum((e) => e.latencyMs.p50), 2),
      '',
      '',
      fmt(sum((e) => e.aloneLatencyMs.p50), 2),
      fmt(sum((e) => e.sqlPerScrape), 1),
      fmt(sum((e) => e.serverCpuMs.primary + e.serverCpuMs.replica), 2),
      fmt(sum((e) => e.serverCpuMs.redis), 3),
      fmt(sum((e) => e.exporterCpuMs), 2),
      mib(sum((e) => e.rss.atEnd ?? Number.NaN)),
      '',
      String(sum((e) => e.samples)),
      fmt(sum((e) => e.wireBytes) / 1024, 1),
    ]);
  }
  if (auto) t.push(row(auto));
  out(t.toString());
  out(`  RSS ${RSS_MARK}→end: dbpilot after a forced low-memory GC at both points (inspector HeapProfiler.collectGarbage on SIGWINCH), the Go exporters as read.`);
  for (const e of f.exporters) {
    const raw = e.rss.atMark !== null && e.rss.atEnd !== null && e.rss.endScrape > RSS_MARK ? `, @${RSS_MARK} ${mib(e.rss.atMark)} MiB, @${e.rss.endScrape} ${mib(e.rss.atEnd)} MiB` : '';
    out(`  ${e.label} ${e.version}: RSS after warm-up ${mib(e.rss.afterWarmup)} MiB${raw}`);
    for (const w of e.warnings) out(`  WARNING ${e.label}: ${w}`);
  }
  if (dbp && dbp.series.length > 1) {
    const g = dbp.rss.afterGc;
    if (g) {
      out(
        `  dbpilot after forced GC: RSS ${mib(g.atMark)} → ${mib(g.atEnd)} MiB, V8 heap used ${mib(g.heapAtMark)} → ${mib(g.heapAtEnd)} MiB (scrape ${RSS_MARK} → ${dbp.rss.endScrape})`,
      );
    }
    const pts = dbp.series.filter((p) => p.scrape % 200 === 0 || p.scrape === dbp.rss.endScrape);
    out(`  dbpilot as read, scrape ${pts.map((p) => p.scrape).join(' / ')}: RSS ${pts.map((p) => mib(p.rss)).join(' / ')} MiB; heap used ${pts.map((p) => mib(p.heapUsed)).join(' / ')} MiB`);
  }

  if (f.load.length) {
    out();
    out(`D. Concurrent scrapers (autocannon, ${LOAD_CONNECTIONS} connections, ${f.load[0]!.seconds} s each, exporter alone):`);
    const lt = new Table({ style, head: ['exporter', 'req/s', 'p50 ms', 'p90 ms', 'p99 ms', 'SQL/request', 'non-2xx', 'errors'] });
    for (const l of f.load) lt.push([l.label, fmt(l.requestsPerSecond, 1), fmt(l.latencyMs.p50, 1), fmt(l.latencyMs.p90, 1), fmt(l.latencyMs.p99, 1), fmt(l.sqlPerRequest, 2), String(l.non2xx), String(l.errors)]);
    out(lt.toString());
  }

  out();
  const p = f.peers;
  if (p.p50SumMs !== null && dbp && pge && rde) {
    out(
      `dbpilot full scrape p50 ${fmt(dbp.latencyMs.p50, 2)} ms vs postgres_exporter + redis_exporter ${fmt(pge.latencyMs.p50, 2)} + ${fmt(rde.latencyMs.p50, 2)} = ` +
        `${fmt(p.p50SumMs, 2)} ms → ratio ${fmt(p.ratio, 3)} (target ≤ ${TARGET_RATIO})`,
    );
  }
  if (dbp) {
    out(`  against the issue's reference (${REFERENCE_PEERS_MS.postgres_exporter} + ${REFERENCE_PEERS_MS.redis_exporter} = ${fmt(p.referenceSumMs, 1)} ms): ratio ${fmt(p.referenceRatio, 3)}`);
  }
  for (const n of f.notes) out(`  note: ${n}`);
}

// ---------------------------------------------------------------------------------------------------

export const scrapeSection: Section = {
  name: 'scrape',
  summary: 'dbpilot /metrics vs postgres_exporter + redis_exporter on the same runbook-shaped data',
  options: {
    scrapes: { type: 'string', default: '200' },
    warmup: { type: 'string', default: '20' },
    'rss-scrapes': { type: 'string', default: '1000' },
    'load-seconds': { type: 'string', default: '5' },
    'dbpilot-runtime': { type: 'string', default: 'dist' },
    'no-peers': { type: 'boolean', default: false },
    'no-auto-discover': { type: 'boolean', default: false },
  },
  help: [
    '--scrapes N             timed sequential scrapes per exporter (default 200)',
    '--warmup N              untimed scrapes first (default 20)',
    '--rss-scrapes N         scrape on to N for the RSS figures; 0 skips (default 1000)',
    '--load-seconds S        10 concurrent scrapers for S s per exporter; 0 skips (default 5)',
    '--dbpilot-runtime R     dist (compiled into .bench/dist, as shipped) or tsx (bin/dbpilot.js from src)',
    '--no-peers              dbpilot only (the target then uses the reference figures)',
    '--no-auto-discover      skip postgres_exporter --auto-discover-databases',
  ],

  async run(ctx): Promise<SectionResult> {
    const scrapes = intOption(ctx.values, 'scrapes', 1);
    const warmup = intOption(ctx.values, 'warmup', 0);
    const rssScrapes = intOption(ctx.values, 'rss-scrapes', 0);
    const loadSeconds = intOption(ctx.values, 'load-seconds', 0);
    const runtime = ctx.values['dbpilot-runtime'];
    if (runtime !== 'dist' && runtime !== 'tsx') throw new UsageError(`--dbpilot-runtime must be dist or tsx (got ${String(runtime)})`);
    const peers = ctx.values['no-peers'] !== true;
    const autoDiscover = ctx.values['no-auto-discover'] !== true;
    const notes: string[] = [];
    const loadAvgStart = os.loadavg();

    const ds = await ctx.dataset();
    const { list: exporterTargets, runtime: dbpilotRuntime } = targets(ctx, ds, { peers, autoDiscover, rssScrapes, runtime }, notes);
    const meter = await Meter.open(ds);
    const closeMeter = onCleanup('meter connections', () => meter.close());
    try {
      ctx.log('measuring idle server CPU (3 s)…');
      const idle = await meter.calibrateIdle(3000);

      ctx.log(`A. dbpilot in-process: ${warmup} + ${scrapes} scrapes for the collector breakdown…`);
      const inProcess = await runInProcess(ctx, ds, meter, warmup, scrapes);

      const cost = new Map<TargetId, CostFigures>();
      for (const t of exporterTargets) {
        ctx.log(`B. ${t.label} alone: ${warmup} + ${Math.max(scrapes, t.rssScrapes)} scrapes…`);
        cost.set(t.id, await runCost(ctx, meter, t, warmup, scrapes));
        await sleep(200);
      }

      ctx.log(`C. ${exporterTargets.map((t) => t.label).join(', ')} and the floor, in turn: ${scrapes} rounds…`);
      // The floor, and for information the same statements prepared, each taking its turn.
      const floorRounds: FloorRound[] = [];
      const stopFloors = onCleanup('floor connections', () => Promise.all(floorRounds.map((f) => f.close())).then(() => undefined));
      let interleaved: Awaited<ReturnType<typeof runInterleaved>>;
      try {
        floorRounds.push(await FloorRound.open(inProcess.recorded ?? [], ds.redis.url));
        floorRounds.push(await FloorRound.open(inProcess.recorded ?? [], ds.redis.url, { prepared: true }));
        interleaved = await runInterleaved(ctx, exporterTargets, warmup, scrapes, floorRounds);
      } finally {
        await stopFloors();
      }
      const latency = interleaved.latency;
      const inTurn = (i: number): FloorFigures => ({ ...interleaved.floorsInTurn[i]!, statements: inProcess.recorded?.length ?? 0, connections: floorRounds[i]!.connections });
      const floorInTurn = inTurn(0);
      const floorPreparedInTurn = inTurn(1);

      // For information: the same rounds back to back (the target uses the floor in turn, above), as text and prepared.
      ctx.log(`floor back to back: the ${inProcess.recorded?.length ?? 0} statements of one scrape and a Redis INFO, concurrently on persistent connections, ${warmup} + ${scrapes} rounds…`);
      const floor = await measureFloor(inProcess.recorded ?? [], ds.redis.url, warmup, scrapes);
      const floorPrepared = await measureFloor(inProcess.recorded ?? [], ds.redis.url, warmup, scrapes, { prepared: true });
      delete inProcess.recorded;

      const load: LoadFigures[] = [];
      if (loadSeconds > 0) {
        for (const t of exporterTargets.filter((x) => x.id !== 'postgres_exporter_auto')) {
          ctx.log(`D. ${t.label}: ${LOAD_CONNECTIONS} concurrent scrapers for ${loadSeconds} s…`);
          load.push(await runLoad(ctx, meter, t, loadSeconds));
        }
      }

      const exporters: ExporterFigures[] = exporterTargets.map((t) => ({ id: t.id, label: t.label, version: t.version, latencyMs: latency.get(t.id)!, ...cost.get(t.id)! }));
      const by = (id: TargetId) => exporters.find((e) => e.id === id);
      const dbp = by('dbpilot')!;
      const pge = by('postgres_exporter');
      const rde = by('redis_exporter');
      const p50Sum = pge && rde ? pge.latencyMs.p50 + rde.latencyMs.p50 : null;
      const referenceSumMs = REFERENCE_PEERS_MS.postgres_exporter + REFERENCE_PEERS_MS.redis_exporter;
      const figures: ScrapeFigures = {
        dataset: { buildSeconds: ds.timings.total ?? Number.NaN, timings: ds.timings, totals: ds.totals },
        plan: { warmup, scrapes, rssScrapes, dbpilotRuntime },
        machine: { cpus: os.cpus().length, loadAvgStart, loadAvgEnd: os.loadavg() },
        idleServerCpu: idle,
        inProcess,
        floorInTurn,
        floorPreparedInTurn,
        floor,
        floorPrepared,
        exporters,
        peers: { p50SumMs: p50Sum, ratio: p50Sum === null ? null : dbp.latencyMs.p50 / p50Sum, referenceSumMs, referenceRatio: dbp.latencyMs.p50 / referenceSumMs },
        load,
        notes,
      };
      printReport(figures);

      const peerBase = p50Sum ?? referenceSumMs;
      const checks: TargetCheck[] = [
        {
          name: `dbpilot p50 ≤ ${TARGET_RATIO} × (postgres_exporter + redis_exporter p50)${p50Sum === null ? ' [reference figures]' : ''}`,
          measured: `${fmt(dbp.latencyMs.p50, 2)} ms (ratio ${fmt(dbp.latencyMs.p50 / peerBase, 3)})`,
          target: `≤ ${fmt(TARGET_RATIO * peerBase, 2)} ms`,
          pass: dbp.latencyMs.p50 <= TARGET_RATIO * peerBase,
        },
        {
          name: `dbpilot p50 ≤ ${FLOOR_RATIO} × the floor (${floorInTurn.statements} statements + Redis INFO, concurrently, persistent connections, in turn)`,
          measured:
            `${fmt(dbp.latencyMs.p50, 2)} ms (floor in turn ${fmt(floorInTurn.p50, 2)} ms, ×${fmt(dbp.latencyMs.p50 / floorInTurn.p50, 2)}; ` +
            `back to back ${fmt(floor.p50, 2)} ms, ×${fmt(dbp.latencyMs.p50 / floor.p50, 2)})`,
          target: `≤ ${fmt(FLOOR_RATIO * floorInTurn.p50, 2)} ms`,
          pass: floorInTurn.n > 0 ? dbp.latencyMs.p50 <= FLOOR_RATIO * floorInTurn.p50 : null,
        },
        {
          name: `dbpilot RSS after ${dbp.rss.endScrape} scrapes ≤ 100 MiB`,
          measured: `${mib(dbp.rss.atEnd)} MiB`,
          target: '≤ 100 MiB',
          pass: dbp.rss.atEnd === null || rssScrapes === 0 ? null : dbp.rss.atEnd <= TARGET_RSS_BYTES,
        },
        {
          name: `dbpilot RSS does not grow (scrape ${RSS_MARK} → ${dbp.rss.endScrape}${dbp.rss.growthBasis === 'after-gc' ? ', after forced GC' : ''})`,
          measured: `${signedMib(dbp.rss.growth)} MiB`,
          target: `≤ +${GROWTH_TOLERANCE_BYTES / MiB} MiB`,
          pass: dbp.rss.growth === null ? null : dbp.rss.growth <= GROWTH_TOLERANCE_BYTES,
        },
      ];
      return { figures: roundAll(figures), targets: checks };
    } finally {
      await closeMeter();
    }
  },
};

/** Rounds every float in the figures, for a readable JSON file. */
function roundAll<T>(v: T): T {
  if (typeof v === 'number') return (Number.isInteger(v) ? v : round(v, 4)) as T;
  if (Array.isArray(v)) return v.map(roundAll) as T;
  if (v && typeof v === 'object') return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, roundAll(x)])) as T;
  return v;
}
