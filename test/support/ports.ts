/** Moved to src/drill/sandbox/ports.ts (the drill ships it); re-exported so the tests keep their imports. */
export * from '../../src/drill/sandbox/ports.js';
