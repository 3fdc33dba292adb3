/**
 * Throw-away Redis servers for tests: 127.0.0.1, a free port, no persistence; never the machine's
 * own Redis on 6379. Run under `setpriv --pdeathsig KILL` so a server dies with the test process even
 * when no JS exit handler runs (see pg-cluster.ts for the same reasoning).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { freePort, onExitCleanup, waitForPortClosed } from './ports.js';

const REDIS_SERVER = process.env.DBPILOT_TEST_REDIS_SERVER ?? 'redis-server';
const START_TIMEOUT_MS = 20_000;

export interface RedisNode {
  readonly host: '127.0.0.1';
  readonly port: number;
  /** redis://127.0.0.1:port */
  readonly url: string;
  /** SIGTERM (Redis shuts down cleanly); resolves once the port refuses connections. */
  stop(): Promise<void>;
  /** SIGKILL; resolves once the port refuses connections. */
  kill(): Promise<void>;
  /** Start again on the same port (empty: nothing is persisted); resolves when it answers PING. No-op if running. */
  start(): Promise<void>;
}

/** Sends a raw RESP PING; true on +PONG. Avoids a client library (and its reconnect logic) here. */
function ping(port: number, timeoutMs = 500): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect({ port, host: '127.0.0.1' });
    let reply = '';
    const done = (ok: boolean): void => {
      socket.removeAllListeners();
      socket.on('error', () => {});
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(timeoutMs, () => done(false));
    socket.once('error', () => done(false));
    socket.once('connect', () => socket.write('PING\r\n'));
    socket.on('data', (chunk) => {
      reply += chunk.toString('utf8');
      if (reply.includes('\r\n')) done(reply.startsWith('+PONG'));
    });
  });
}

class RedisServer implements RedisNode {
  readonly host = '127.0.0.1' as const;
  private child: ChildProcess | undefined;
  private exited: Promise<void> = Promise.resolve();
  /** Temp dir (--dir, log file) of the current run; it lives only while the server runs. */
  private dir: string | undefined;
  private unregisterCleanup: (() => void) | undefined;

  constructor(public port: number) {}

  get url(): string {
    return `redis://${this.host}:${this.port}`;
  }

  async start(): Promise<void> {
    if (this.child !== undefined) return;
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dbpilot-redis-'));
    const logFile = path.join(dir, 'redis.log');
    this.dir = dir;
    this.unregisterCleanup = onExitCleanup(() => {
      this.killSync();
      fs.rmSync(dir, { recursive: true, force: true });
    });
    const child = spawn(
      'setpriv',
      [
        '--pdeathsig=KILL', '--', REDIS_SERVER,
        '--port', String(this.port), '--bind', '127.0.0.1',
        '--save', '', '--appendonly', 'no', '--daemonize', 'no',
        '--dir', dir, '--logfile', logFile,
      ],
      { stdio: 'ignore', detached: true },
    );
    child.unref(); // a running server must not keep a test process alive
    let hasExited = false;
    let exitLog = '';
    this.exited = new Promise<void>((resolve) => {
      const onGone = (): void => {
        hasExited = true;
        exitLog = readTail(logFile); // before the dir goes
        if (this.child === child) {
          this.child = undefined;
          this.removeDir();
        }
        resolve();
      };
      child.once('exit', onGone);
      child.once('error', onGone);
    });
    this.child = child;

    const deadline = Date.now() + START_TIMEOUT_MS;
    for (;;) {
      if (hasExited) throw new Error(`redis-server exited during start (port ${this.port}):\n${exitLog}`);
      if (await ping(this.port)) return;
      if (Date.now() >= deadline) {
        const log = readTail(logFile);
        this.killSync();
        throw new Error(`redis-server not answering PING on port ${this.port} in time:\n${log}`);
      }
      await sleep(25);
    }
  }

  async stop(): Promise<void> {
    const child = this.child;
    if (child?.pid === undefined) return;
    // The child is unref'd while it runs; hold the event loop open until it has exited. The timeout
    // timer is unref'd instead, so it does not delay process exit after a quick stop.
    child.ref();
    child.kill('SIGTERM');
    const timeout = sleep(10_000, undefined, { ref: false }).then(() => false);
    const stopped = await Promise.race([this.exited.then(() => true), timeout]);
    if (!stopped) this.killSync();
    await waitForPortClosed(this.port, 10_000);
  }

  async kill(): Promise<void> {
    if (this.child === undefined) return;
    this.child.ref(); // see stop()
    this.killSync();
    await waitForPortClosed(this.port, 10_000);
    await Promise.race([this.exited, sleep(5_000, undefined, { ref: false })]);
  }

  killSync(): void {
    this.child?.kill('SIGKILL');
  }

  private removeDir(): void {
    if (this.dir !== undefined) fs.rmSync(this.dir, { recursive: true, force: true });
    this.dir = undefined;
    this.unregisterCleanup?.();
    this.unregisterCleanup = undefined;
  }
}

function readTail(file: string): string {
  try {
    return fs.readFileSync(file, 'utf8').slice(-4000);
  } catch {
    return '(no log)';
  }
}

/** Starts a Redis on a free port; resolves when it answers PING. */
export async function startRedis(): Promise<RedisNode> {
  const server = new RedisServer(await freePort());
  // Another process may grab the "free" port between freePort() and the bind: retry on a new one.
  for (let attempt = 1; ; attempt++) {
    try {
      await server.start();
      return server;
    } catch (err) {
      const message = err instanceof Error ? err.message : String(err);
      if (attempt >= 3 || !/Address already in use|Could not create server TCP listening socket/.test(message)) throw err;
      server.port = await freePort();
    }
  }
}
