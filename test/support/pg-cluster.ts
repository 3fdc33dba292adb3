/** Moved to src/drill/sandbox/pg-cluster.ts (the drill ships it); re-exported so the tests keep their imports. */
export * from '../../src/drill/sandbox/pg-cluster.js';
