/**
 * Clean-up for the benchmark (the drill's Cleanup, src/drill/cleanup.ts): everything started
 * (servers, child processes, the in-process service) registers an async stop here; they run newest
 * first at the end, on an error, and on Ctrl-C / SIGTERM. A second Ctrl-C exits at once: the servers and children still die with us (they run under
 * `setpriv --pdeathsig KILL`), and the harness' exit hook removes its temp dirs.
 */
import { Cleanup } from '../src/drill/cleanup.js';

const cleanup = new Cleanup('bench', { reportSlowerThanMs: 2000 });
let signalled = false;

/** Registers a stop; returns a function that runs it now (once) and unregisters it. */
export function onCleanup(label: string, fn: () => Promise<void> | void): () => Promise<void> {
  return cleanup.add(label, fn);
}

/** Runs every registered stop, newest first; errors are reported and do not stop the others. */
export function cleanupAll(): Promise<void> {
  return cleanup.all();
}

/** Ctrl-C and SIGTERM: clean up, then exit 130 / 143. A second signal exits immediately. */
export function installSignalHandlers(): void {
  const handler = (signal: NodeJS.Signals) => {
    if (signalled) {
      process.stderr.write(`\nbench: ${signal} again, exiting without waiting\n`);
      process.exit(signal === 'SIGINT' ? 130 : 143);
    }
    signalled = true;
    process.stderr.write(`\nbench: ${signal}, stopping servers and child processes…\n`);
    void cleanupAll().finally(() => process.exit(signal === 'SIGINT' ? 130 : 143));
  };
  process.on('SIGINT', handler);
  process.on('SIGTERM', handler);
}

export function interrupted(): boolean {
  return signalled;
}
