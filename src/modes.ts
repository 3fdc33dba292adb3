/** The modes a handler runs in (global `mode`, or per handler). Kept apart so handler modules can use them without loading the configuration. */
export const MODES = ['off', 'dry-run', 'approve', 'auto'] as const;
export type Mode = (typeof MODES)[number];
