/** Moved to src/drill/sandbox/k8s-standin.ts (the drill ships it); re-exported so the tests keep their imports. */
export * from '../../src/drill/sandbox/k8s-standin.js';
