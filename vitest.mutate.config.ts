/**
 * vitest configuration for mutation testing (`npm run mutate`, see stryker.config.mjs): the base
 * configuration — the same global setup (a real PostgreSQL primary + replica and Redis, started once
 * per Stryker test-runner process) and timeouts — limited to the test files that exercise the mutated
 * modules. Not used by `npm test` or CI.
 */
import { defineConfig } from 'vitest/config';
import base from './vitest.config.js';

export default defineConfig({
  ...base,
  test: {
    ...base.test,
    // Replaces the base list (vitest's mergeConfig would append to it).
    include: [
      'test/remediation/slow-queries.test.ts',
      'test/remediation/engine.test.ts',
      'test/remediation/engine-admission.test.ts',
      'test/remediation/outbox.test.ts',
      'test/remediation/webhook.test.ts',
      'test/config-approvers.test.ts',
      // Tests written to kill surviving mutants: safety rails no other test pinned down.
      'test/remediation/*.rails.test.ts',
    ],
  },
});
