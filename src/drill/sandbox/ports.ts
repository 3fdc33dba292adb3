/**
 * TCP port helpers for the real-server test harness, plus the last-resort clean-up hook that the
 * server helpers share.
 *
 * Readiness and "is it down" are judged by the port, never by a PID: after a SIGKILL the process can
 * linger as a zombie for a moment, while its listening socket is already gone.
 */
import net from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';

const HOST = '127.0.0.1';

/** Asks the kernel for a free port on 127.0.0.1 (listen on port 0, read it, close). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.unref();
    server.once('error', reject);
    server.listen(0, HOST, () => {
      const address = server.address();
      if (address === null || typeof address === 'string') {
        server.close();
        reject(new Error('freePort: server has no TCP address'));
        return;
      }
      const { port } = address;
      server.close((err) => (err ? reject(err) : resolve(port)));
    });
  });
}

/** True if a TCP connection to host:port is accepted within timeoutMs. */
export function canConnect(port: number, host = HOST, timeoutMs = 500): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect({ port, host });
    const done = (ok: boolean): void => {
      socket.removeAllListeners();
      socket.on('error', () => {}); // a late error after destroy must not become an uncaught exception
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(timeoutMs, () => done(false));
    socket.once('connect', () => done(true));
    socket.once('error', () => done(false));
  });
}

/** Resolves once host:port accepts TCP connections; rejects after timeoutMs. */
export async function waitForPort(port: number, timeoutMs: number, host = HOST): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await canConnect(port, host, Math.min(500, Math.max(50, deadline - Date.now())))) return;
    if (Date.now() >= deadline) throw new Error(`waitForPort: ${host}:${port} not accepting connections after ${timeoutMs} ms`);
    await sleep(50);
  }
}

/** Resolves once host:port refuses (or no longer accepts) TCP connections; rejects after timeoutMs. */
export async function waitForPortClosed(port: number, timeoutMs: number, host = HOST): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (!(await canConnect(port, host, 250))) return;
    if (Date.now() >= deadline) throw new Error(`waitForPortClosed: ${host}:${port} still accepting connections after ${timeoutMs} ms`);
    await sleep(25);
  }
}

// ---------------------------------------------------------------------------------------------------
// Last-resort clean-up

const exitCleanups = new Set<() => void>();
let cleanupInstalled = false;

function runExitCleanups(): void {
  for (const fn of exitCleanups) {
    try {
      fn();
    } catch {
      // best effort: keep going with the others
    }
  }
  exitCleanups.clear();
}

/**
 * Registers a synchronous clean-up (SIGKILL servers, remove temp dirs) to run when this process ends;
 * returns a function that unregisters it.
 *
 * 'exit' covers a normal end and process.exit() (what the vitest main process does, also on Ctrl-C).
 * vitest stops its fork workers with SIGTERM, whose default action ends a process *without* 'exit', so
 * in a worker we also catch SIGTERM/SIGINT, clean up, and re-raise the signal for its default action.
 * Servers survive none of this anyway (they run under `setpriv --pdeathsig KILL`); this is mostly
 * about not leaving temp dirs behind.
 */
export function onExitCleanup(fn: () => void): () => void {
  exitCleanups.add(fn);
  if (!cleanupInstalled) {
    cleanupInstalled = true;
    process.on('exit', runExitCleanups);
    if (process.env.VITEST_WORKER_ID !== undefined) {
      const onSignal = (signal: NodeJS.Signals): void => {
        runExitCleanups();
        process.off('SIGTERM', onSignal);
        process.off('SIGINT', onSignal);
        if (process.listenerCount(signal) === 0) process.kill(process.pid, signal);
      };
      process.on('SIGTERM', onSignal);
      process.on('SIGINT', onSignal);
    }
  }
  return () => exitCleanups.delete(fn);
}
