/**
 * What every handler's options have in common, and the runbook handler names. Each handler declares
 * its own options beside it (`handlerOptions({...})` with its defaults), the registry in ./index.ts
 * lists them, and the configuration schema is built from that list: adding a handler touches its own
 * file and the registry, never config.ts (Robusta's action parameter models are the example).
 */
import { z } from 'zod';
import { MODES } from '../../modes.js';

/** Every runbook scenario dbpilot knows a handler name for; configuration for any other name is refused. */
export const HANDLER_NAMES = [
  'primary-failover',
  'rebuild-replica',
  'slow-queries',
  'disk-full',
  /** Runbook scenario 3, step 4 (VACUUM FULL of one table): approval only. */
  'vacuum-full',
  'prisma-migration',
  'redis-failure',
  'redis-flushall',
  'replication-lag',
  'data-corruption',
] as const;
export type HandlerName = (typeof HANDLER_NAMES)[number];

export interface PolicyDefaults {
  /** A run left in flight longer than this (since its last recorded progress) is escalated instead of resumed. */
  resumeMaxAgeSeconds?: number;
  /** A run that waited for approval longer than this is refused at approval: its plan describes a past system. */
  approveMaxAgeSeconds?: number;
  cooldownSeconds?: number;
}

/** The engine's policy knobs, with the handler's own defaults where they differ. */
export function policyOptions(d: PolicyDefaults = {}) {
  return {
    mode: z.enum(MODES).optional(),
    /** Seconds after a run on the same target before another may start. */
    cooldownSeconds: z.number().int().min(0).default(d.cooldownSeconds ?? 300),
    /** Runs per target within `attemptWindowSeconds` before dbpilot stops trying and escalates. */
    maxAttempts: z.number().int().min(1).default(3),
    attemptWindowSeconds: z.number().int().min(60).default(3600),
    resumeMaxAgeSeconds: z.number().int().min(10).default(d.resumeMaxAgeSeconds ?? 600),
    approveMaxAgeSeconds: z.number().int().min(10).default(d.approveMaxAgeSeconds ?? 3600),
    /** How long a run whose target is wider than a lock held by another run waits for it to end. */
    lockWaitSeconds: z.number().min(0).max(3600).default(60),
  };
}

/** A handler's options: the policy knobs plus its own, unknown keys refused. */
export function handlerOptions<S extends z.ZodRawShape>(shape: S, defaults: PolicyDefaults = {}) {
  return z.strictObject({ ...policyOptions(defaults), ...shape });
}

/** Options of a runbook handler this build does not have yet: accepted, so its mode can be set before it lands. */
export const genericOptions = handlerOptions({});
export type PolicyOptions = z.output<typeof genericOptions>;

export const databaseName = z.string().regex(/^[A-Za-z_][A-Za-z0-9_$-]{0,62}$/, 'not a valid database name');
export const identifier = z.string().regex(/^[A-Za-z_][A-Za-z0-9_$]{0,62}$/, 'not a plain SQL identifier');
