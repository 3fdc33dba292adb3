/**
 * What a drill breaks and watches: its own sandbox (build-sandbox.ts) or a named staging target
 * (staging.ts). Both run dbpilot in this process, in auto mode for the drilled handler, with pages going
 * to the drill's PagerDuty stand-in; the breaks that work on both (slow-query, replication-lag) take a
 * DrillWorld and nothing more.
 */
import type { Config } from '../config.js';
import { createLogger } from '../logger.js';
import { createRemediation, type Remediation } from '../remediation/index.js';
import { remediationRoutes } from '../remediation/routes.js';
import { startService, type Service } from '../server.js';
import type { Cleanup } from './cleanup.js';
import type { PagerDutyStandin } from './sandbox/pagerduty-standin.js';

export type Say = (line: string) => void;

/** A login for a role the drill made itself (never one of the target's). */
export interface Login {
  user: string;
  password: string;
}

export interface DrillWorld {
  kind: 'sandbox' | 'staging';
  /** The drill's temp dir (dbpilot's store lives there). */
  dir: string;
  primary: {
    /** host:port, as dbpilot labels it (`server`). */
    server: string;
    /** The primary's URL for `database` (default: the configured one), as `login` when given. */
    url(database?: string, login?: Login): string;
  };
  /** The first configured replica, or null when there is none. */
  replica: { server: string; url(database?: string): string } | null;
  pagerduty: PagerDutyStandin;
  config: Config;
  service: Service;
  remediation: Remediation;
  /** http://127.0.0.1:PORT of the in-process dbpilot. */
  url: string;
  token: string;
  /** Every port the drill listens on (for the teardown check). */
  ports(): number[];
  /** dbpilot's log lines (JSON), kept in memory. */
  log: string[];
}

/** The webhook token of a drill's dbpilot: random per drill, never anything of the user's. */
export const drillToken = () => `drill-${Math.random().toString(36).slice(2)}${Math.random().toString(36).slice(2)}`;

/** One PagerDuty routing key per team, so a drill can tell from the stand-in which team was paged. */
export const ROUTING_KEYS = {
  'lead-dba': 'DRILLLEADDBA00000000000000000000',
  'em-dba': 'DRILLEMDBA0000000000000000000000',
  'oncall-backend': 'DRILLONCALLBACKEND00000000000000',
  devops: 'DRILLDEVOPS000000000000000000000',
} as const;

/** The drill's pagerduty: block: every team's page goes to the stand-in. */
export const standinPagerduty = (pagerduty: PagerDutyStandin) => ({
  url: pagerduty.url,
  routes: { ...ROUTING_KEYS },
  source: 'dbpilot-drill',
  timeoutMs: 2000,
  retry: { baseMs: 20, maxMs: 200 },
});

/** dbpilot in this process (startService, as `serve` runs it), waiting until it holds the lead. */
export async function startDrillDbpilot(config: Config, cleanup: Cleanup): Promise<{ service: Service; remediation: Remediation; url: string; log: string[] }> {
  const log: string[] = [];
  const logger = createLogger('info', { write: (s: string) => void log.push(s) });
  let remediation: Remediation | undefined;
  const service = await startService(config, logger, async (runtime) => {
    const r = await createRemediation(runtime, { label: 'drill' });
    remediation = r;
    runtime.onClose(() => r.close());
    return {
      options: { ready: () => true, extraRoutes: remediationRoutes(r.engine, runtime.config, runtime.metrics, r.leadership) },
      start: () => r.start(),
    };
  });
  cleanup.add('dbpilot', () => service.close());
  const deadline = Date.now() + 15_000;
  while (!remediation!.leader.isLeader()) {
    if (Date.now() > deadline) throw new Error('the drill’s dbpilot did not take the lead within 15 s');
    await new Promise((r) => setTimeout(r, 20));
  }
  return { service, remediation: remediation!, url: `http://127.0.0.1:${service.address.port}`, log };
}
