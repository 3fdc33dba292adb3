/** The drills this build has, and those issue 12 adds later (kept apart so the CLI loads no sandbox code until a drill runs). */
export const DRILLS = ['primary-failure', 'slow-query', 'redis-failure', 'replication-lag', 'prisma-migration', 'disk-pressure'] as const;
export type DrillName = (typeof DRILLS)[number];
export const LATER_DRILLS = [] as const;
export const isDrill = (s: string): s is DrillName => (DRILLS as readonly string[]).includes(s);
