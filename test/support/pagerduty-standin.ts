/** Moved to src/drill/sandbox/pagerduty-standin.ts (the drill ships it); re-exported so the tests keep their imports. */
export * from '../../src/drill/sandbox/pagerduty-standin.js';
