// @ts-check
/**
 * Mutation testing of the safety-critical remediation modules (StrykerJS), run by hand:
 *
 *   npm run mutate                                          # everything below (see README "Mutation testing")
 *   npm run mutate -- --mutate src/remediation/routes.ts:22-72
 *   npm run mutate -- --mutate src/remediation/engine.ts:327-342,src/remediation/outbox.ts
 *
 * Not part of `npm test` or CI. Reports: reports/mutation/mutation.html and mutation.json.
 *
 * Stryker copies the project into .stryker-tmp/sandbox-*, instruments the mutated files there and runs
 * vitest in a child process (the vitest runner, in-process vitest API). vitest.mutate.config.ts is the
 * normal configuration with the same global setup: each test-runner process starts its own PostgreSQL
 * primary + replica (as the postgres user via setpriv when root) and Redis in temp dirs outside the
 * sandbox, once, and reuses them for every mutant it runs.
 *
 * @type {import('@stryker-mutator/api/core').PartialStrykerOptions}
 */
export default {
  testRunner: 'vitest',
  plugins: ['@stryker-mutator/vitest-runner'],
  vitest: {
    configFile: 'vitest.mutate.config.ts',
    // Run the configured test files, not vitest's guess of which ones import the mutated file.
    related: false,
  },
  mutate: [
    'src/remediation/handlers/slow-queries.ts',
    'src/remediation/engine.ts',
    // The engine split by responsibility (admission, executor, resumer, outcomes, core), when present.
    'src/remediation/engine/**/*.ts',
    'src/remediation/outbox.ts',
    // Webhook and approver authentication: same() + authorized() + jsonContentTypeProblem(), and approverFor().
    'src/remediation/routes.ts:17-47',
    'src/remediation/routes.ts:63-72',
  ],
  // Each mutant runs only the tests that executed it in the initial run.
  coverageAnalysis: 'perTest',
  // Mutants executed only while a module loads or in beforeAll hooks (harness start-up) would each
  // re-run all six test files (about a minute apiece). Mutants that a test also executes are kept and
  // run against those tests. `npm run mutate -- --ignoreStatic false` includes them all.
  ignoreStatic: true,
  // Two cores shared with other work: one test runner (each one starts its own PostgreSQL and Redis).
  concurrency: 1,
  // Real PostgreSQL on a busy machine: a test that is slower than in the initial run is not a hang.
  timeoutMS: 15_000,
  timeoutFactor: 2,
  dryRunTimeoutMinutes: 15,
  reporters: ['clear-text', 'progress', 'html', 'json'],
  htmlReporter: { fileName: 'reports/mutation/mutation.html' },
  jsonReporter: { fileName: 'reports/mutation/mutation.json' },
  thresholds: { high: 90, low: 75, break: null },
  tempDirName: '.stryker-tmp',
  cleanTempDir: true,
  // Not needed in the sandbox (node_modules is symlinked, not copied).
  ignorePatterns: ['data', 'dist', 'coverage', '.bench', 'reports'],
  // Stryker's own diagnostics (the progress and the report are on stdout); stryker.log with --fileLogLevel.
  logLevel: 'info',
};
