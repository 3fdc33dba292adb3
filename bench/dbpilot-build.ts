/**
 * How the benchmark runs dbpilot as a child process. Production runs the compiled build (`npm run
 * build` → dist/, what the image ships); from a checkout `bin/dbpilot.js` runs the sources through
 * tsx, which costs about 80 MiB more RSS and seconds of start-up. So by default the sources are
 * compiled with the project's own tsc into `.bench/dist` (reused while src/ and the tsconfigs are
 * unchanged: a content hash is kept as the marker) and that build is run; `--dbpilot-runtime tsx`
 * runs bin/dbpilot.js instead.
 */
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';

export type DbpilotRuntime = 'dist' | 'tsx';

export interface DbpilotCommand {
  cmd: string;
  args: string[];
  runtime: DbpilotRuntime;
  note?: string;
}

function listFiles(dir: string): string[] {
  const out: string[] = [];
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) out.push(...listFiles(p));
    else if (e.isFile()) out.push(p);
  }
  return out.sort();
}

function sourceHash(root: string): string {
  const h = createHash('sha256');
  const files = [...listFiles(path.join(root, 'src')), ...['tsconfig.json', 'tsconfig.build.json', 'package-lock.json'].map((f) => path.join(root, f))];
  for (const f of files) {
    if (!fs.existsSync(f)) continue;
    h.update(path.relative(root, f));
    h.update('\0');
    h.update(fs.readFileSync(f));
    h.update('\0');
  }
  return h.digest('hex');
}

/**
 * The Node options the container image runs dbpilot with: the arguments between `node` and
 * `bin/dbpilot.js` in the Dockerfile's last ENTRYPOINT (exec form). The compiled build runs with
 * them, so the memory the bench reports is the image's.
 */
export function imageNodeFlags(dockerfile: string): string[] {
  const lines = dockerfile.split('\n').filter((l) => /^ENTRYPOINT\s+\[/.test(l));
  const last = lines.at(-1);
  if (!last) throw new Error('Dockerfile: no ENTRYPOINT in exec form');
  const argv = JSON.parse(last.replace(/^ENTRYPOINT\s+/, '')) as string[];
  if (argv[0] !== 'node' || argv.at(-1) !== 'bin/dbpilot.js') throw new Error(`Dockerfile: ENTRYPOINT ${last} is not node … bin/dbpilot.js`);
  return argv.slice(1, -1);
}

export function dbpilotCommand(root: string, workDir: string, runtime: DbpilotRuntime, log: (msg: string) => void): DbpilotCommand {
  const tsx: DbpilotCommand = { cmd: process.execPath, args: [path.join(root, 'bin/dbpilot.js'), 'serve'], runtime: 'tsx' };
  if (runtime === 'tsx') return tsx;

  const outDir = path.join(workDir, 'dist');
  const marker = path.join(outDir, '.source-hash');
  const entry = path.join(outDir, 'bench-entry.mjs');
  const key = sourceHash(root);
  const flags = imageNodeFlags(fs.readFileSync(path.join(root, 'Dockerfile'), 'utf8'));
  const cmd: DbpilotCommand = { cmd: process.execPath, args: [...flags, entry, 'serve'], runtime: 'dist' };
  if (fs.existsSync(marker) && fs.readFileSync(marker, 'utf8') === key && fs.existsSync(entry)) return cmd;

  log('compiling dbpilot (tsc -p tsconfig.build.json) into .bench/dist…');
  const started = performance.now();
  fs.rmSync(outDir, { recursive: true, force: true });
  const tsc = path.join(root, 'node_modules/typescript/bin/tsc');
  const r = spawnSync(process.execPath, [tsc, '-p', path.join(root, 'tsconfig.build.json'), '--outDir', outDir, '--sourceMap', 'false'], {
    cwd: root,
    encoding: 'utf8',
  });
  if (!fs.existsSync(path.join(outDir, 'cli.js'))) {
    return { ...tsx, note: `could not compile dbpilot (${(r.stdout || r.stderr || String(r.error)).split('\n')[0]}): ran bin/dbpilot.js through tsx instead` };
  }
  fs.writeFileSync(entry, "const cli = await import('./cli.js');\nawait cli.main(process.argv);\n");
  log(`compiled in ${((performance.now() - started) / 1000).toFixed(1)} s`);
  if (r.status !== 0) {
    // tsc emits despite type errors; the build runs, but say so (and do not cache it).
    return { ...cmd, note: `tsc reported errors in src/ (${r.stdout.split('\n')[0]}); the emitted JavaScript was run anyway` };
  }
  fs.writeFileSync(marker, key);
  return cmd;
}

/**
 * A preload for the dbpilot child: on SIGWINCH it asks V8, through an in-process inspector session,
 * for the collection DevTools' "collect garbage" button does (HeapProfiler.collectGarbage: a
 * low-memory full GC that also hands freed pages back; a plain --expose-gc gc() leaves RSS where it
 * was) and writes its memory figures to $BENCH_GC_FILE. RSS read right after that is the memory
 * dbpilot really holds, so "does it grow" is not decided by when V8 last happened to collect.
 * (Not SIGUSR2: close-with-grace shuts the service down on it. SIGWINCH is ignored by default, so a
 * child without the preload just carries on.) The session is disconnected outside its own callback:
 * disconnecting inside it hangs on Node 20.
 */
const GC_PRELOAD = `import fs from 'node:fs';
import { Session } from 'node:inspector';
const file = process.env.BENCH_GC_FILE;
let seq = 0;
if (file) {
  process.on('SIGWINCH', () => {
    const session = new Session();
    session.connect();
    session.post('HeapProfiler.collectGarbage', () => {
      const m = process.memoryUsage();
      setImmediate(() => {
        session.disconnect();
        fs.writeFileSync(file, JSON.stringify({ seq: ++seq, rss: m.rss, heapUsed: m.heapUsed }));
      });
    });
  });
}
`;

/** Writes the preload into the work dir; returns the node options that load it. */
export function gcPreloadArgs(workDir: string): string[] {
  const file = path.join(workDir, 'gc-on-signal.mjs');
  fs.writeFileSync(file, GC_PRELOAD);
  return ['--import', pathToFileURL(file).href];
}

/** Asks the child to collect garbage; resolves with its heap used afterwards, or null if it did not answer. */
export async function forceGc(pid: number, file: string, timeoutMs = 5000): Promise<{ heapUsed: number } | null> {
  const seq = () => {
    try {
      return (JSON.parse(fs.readFileSync(file, 'utf8')) as { seq: number; heapUsed: number });
    } catch {
      return null;
    }
  };
  const before = seq()?.seq ?? 0;
  try {
    process.kill(pid, 'SIGWINCH');
  } catch {
    return null;
  }
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const cur = seq();
    if (cur && cur.seq > before) return { heapUsed: cur.heapUsed };
    await new Promise((r) => setTimeout(r, 20));
  }
  return null;
}
