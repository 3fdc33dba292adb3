/** The drills this build has, and those issue 12 adds later (kept apart so the CLI loads no sandbox code until a drill runs). */
export const DRILLS = ['primary-failure', 'slow-query', 'redis-failure', 'replication-lag', 'prisma-migration', 'disk-pressure'] as const;
export type DrillName = (typeof DRILLS)[number];
export const LATER_DRILLS = [] as const;
export const isDrill = (s: string): s is DrillName => (DRILLS as readonly string[]).includes(s);

/** The drills a staging target takes (src/drill/staging.ts): their break and its undoing need only PostgreSQL connections. */
export const STAGING_DRILLS = ['slow-query', 'replication-lag'] as const satisfies readonly DrillName[];
export type StagingDrill = (typeof STAGING_DRILLS)[number];
export const isStagingDrill = (s: string): s is StagingDrill => (STAGING_DRILLS as readonly string[]).includes(s);
