/** Moved to src/drill/sandbox/prisma.ts (the prisma-migration drill ships it); re-exported so the tests keep their imports. */
export * from '../../src/drill/sandbox/prisma.js';
