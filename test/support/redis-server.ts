/** Moved to src/drill/sandbox/redis-server.ts (the drill ships it); re-exported so the tests keep their imports. */
export * from '../../src/drill/sandbox/redis-server.js';
