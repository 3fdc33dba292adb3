/**
 * Clean-up for the benchmark: everything started (servers, child processes, the in-process service)
 * registers an async stop here; they run newest first at the end, on an error, and on Ctrl-C / SIGTERM.
 * A second Ctrl-C exits at once: the servers and children still die with us (they run under
 * `setpriv --pdeathsig KILL`), and the harness' exit hook removes its temp dirs.
 */
type Stop = { label: string; fn: () => Promise<void> | void };

const stack: Stop[] = [];
let running: Promise<void> | null = null;
let signalled = false;

/** Registers a stop; returns a function that runs it now (once) and unregisters it. */
export function onCleanup(label: string, fn: () => Promise<void> | void): () => Promise<void> {
  const entry: Stop = { label, fn };
  stack.push(entry);
  let done: Promise<void> | null = null;
  return () =>
    (done ??= (async () => {
      const i = stack.indexOf(entry);
      if (i >= 0) stack.splice(i, 1);
      await fn();
    })());
}

/** Runs every registered stop, newest first; errors are reported and do not stop the others. */
export function cleanupAll(): Promise<void> {
  running ??= (async () => {
    while (stack.length > 0) {
      const { label, fn } = stack.pop()!;
      const started = performance.now();
      try {
        await withTimeout(Promise.resolve().then(fn), 30_000, label);
        const s = (performance.now() - started) / 1000;
        if (s > 2) process.stderr.write(`bench: stopping ${label} took ${s.toFixed(1)} s\n`);
      } catch (err) {
        process.stderr.write(`bench: clean-up of ${label} failed: ${(err as Error).message}\n`);
      }
    }
  })().finally(() => {
    running = null;
  });
  return running;
}

function withTimeout<T>(p: Promise<T>, ms: number, label: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    p,
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${label} did not stop within ${ms} ms`)), ms);
      timer.unref();
    }),
  ]).finally(() => clearTimeout(timer));
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
