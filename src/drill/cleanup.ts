/**
 * Clean-up for a drill (and for the benchmark, bench/cleanup.ts): everything the drill starts — servers, stand-ins,
 * the in-process dbpilot, temp dirs — registers an async stop here; they run newest first at the end,
 * on an error, and on Ctrl-C / SIGTERM. A second signal exits at once: the PostgreSQL and Redis
 * servers still die with us (they run under `setpriv --pdeathsig KILL`), and the sandbox's exit hook
 * removes its temp dirs.
 */
import { constants as osConstants } from 'node:os';

type Stop = { label: string; fn: () => Promise<void> | void };

export class Cleanup {
  private readonly stack: Stop[] = [];
  private running: Promise<void> | null = null;
  /** Set by a signal or a crash: the process exits after this teardown, nothing new may start. */
  private final = false;
  /** The stops that failed (label: error), so a drill can say it left something behind. */
  readonly failures: string[] = [];

  /**
   * `who` starts its messages (`dbpilot drill`, `bench`); a stop slower than `reportSlowerThanMs` is
   * reported with its time (the benchmark wants to know; a drill does not).
   */
  constructor(
    private readonly who = 'dbpilot drill',
    private readonly opts: { reportSlowerThanMs?: number } = {},
  ) {}

  /** Registers a stop; returns a function that runs it now (once) and unregisters it. */
  add(label: string, fn: () => Promise<void> | void): () => Promise<void> {
    const entry: Stop = { label, fn };
    this.stack.push(entry);
    let done: Promise<void> | null = null;
    return () =>
      (done ??= (async () => {
        const i = this.stack.indexOf(entry);
        if (i >= 0) this.stack.splice(i, 1);
        await fn();
      })());
  }

  get size(): number {
    return this.stack.length;
  }

  /** True while a teardown runs, and for good after a signal: a break must not make anything new then (nothing would undo it). */
  get closing(): boolean {
    return this.final || this.running !== null;
  }

  /** The last teardown (a signal, a crash): runs every stop, and nothing may be made afterwards. */
  finish(): Promise<void> {
    this.final = true;
    return this.all();
  }

  /** Throws when the teardown started: called before each statement that makes something to undo. */
  assertOpen(what: string): void {
    if (this.closing) throw new Error(`stopping: ${what} not done`);
  }

  /** Runs every registered stop, newest first; errors are reported and do not stop the others. */
  all(): Promise<void> {
    this.running ??= (async () => {
      while (this.stack.length > 0) {
        const { label, fn } = this.stack.pop()!;
        const started = performance.now();
        try {
          await withTimeout(Promise.resolve().then(fn), 30_000, label);
          const ms = performance.now() - started;
          if (this.opts.reportSlowerThanMs !== undefined && ms > this.opts.reportSlowerThanMs) process.stderr.write(`${this.who}: stopping ${label} took ${(ms / 1000).toFixed(1)} s\n`);
        } catch (err) {
          this.failures.push(`${label}: ${(err as Error).message}`);
          process.stderr.write(`${this.who}: clean-up of ${label} failed: ${(err as Error).message}\n`);
        }
      }
    })().finally(() => {
      this.running = null;
    });
    return this.running;
  }
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

/**
 * Ctrl-C, SIGTERM and SIGHUP: clean up, then exit 130 / 143 / 129 (and on a crash, exit 1). A second signal exits immediately on the sandbox
 * (its servers die with us); on a staging target it does not: what the drill did there (a paused
 * replay, its database and role) is undone only by the clean-up, so the drill says so and keeps at it.
 * Returns a function that removes the handlers.
 */
export function onSignals(cleanup: Cleanup, say: (line: string) => void, opts: { staging?: boolean } = {}): () => void {
  let signalled = false;
  const handler = (signal: NodeJS.Signals) => {
    const code = 128 + (osConstants.signals[signal] ?? 15);
    if (signalled) {
      if (opts.staging) return say(`${signal} again: still undoing the drill's break on the staging target (only SIGKILL stops that, and leaves it undone)`);
      say(`${signal} again, exiting without waiting`);
      process.exit(code);
    }
    signalled = true;
    say(`${signal}: ${opts.staging ? "undoing the drill's break on the staging target and stopping its dbpilot" : 'stopping the sandbox'}…`);
    void cleanup.finish().finally(() => process.exit(code));
  };
  // SIGHUP: the terminal or the ssh session to a bastion went away, the likeliest way an on-call run dies.
  const signals = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const;
  for (const sig of signals) process.on(sig, handler);
  // A crash must not skip the undo either (on a staging target nothing else would do it).
  const crashed = (err: unknown) => {
    say(`crashed (${err instanceof Error ? err.message : String(err)}): ${opts.staging ? "undoing the drill's break on the staging target" : 'stopping the sandbox'}…`);
    void cleanup.finish().finally(() => process.exit(1));
  };
  process.on('uncaughtException', crashed);
  process.on('unhandledRejection', crashed);
  return () => {
    for (const sig of signals) process.off(sig, handler);
    process.off('uncaughtException', crashed);
    process.off('unhandledRejection', crashed);
  };
}
