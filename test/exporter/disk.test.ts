/**
 * pg_filesystem_size_bytes / pg_filesystem_avail_bytes (what PostgresDiskAlmostFull reads) against
 * what `df` (coreutils) says of the same directory, read just before and just after the scrape: size
 * exactly, and the bytes available to non-root users (df's "avail") exactly whenever the file system
 * did not change between the two reads; and avail goes down by exactly what the test writes.
 *
 * The directory stands in for the data directory (the collector only statfs()es the configured
 * path). It is a small tmpfs of the test's own when the test may mount one (root, as in CI), so that
 * nothing else writes there; else a directory in /dev/shm, where little else does.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { scrape, value, type ScrapeResult } from '../support/scrape.js';
import { makeConfig, serverOf, startTestService, type TestService } from '../support/service.js';

/** df's size and avail of the file system holding `dir`, in bytes. */
function df(dir: string): { size: number; avail: number } {
  const out = execFileSync('df', ['--block-size=1', '--output=size,avail', dir], { encoding: 'utf8' });
  const [size, avail] = out.trim().split('\n').at(-1)!.trim().split(/\s+/).map(Number);
  return { size: size!, avail: avail! };
}

/** A private tmpfs of `sizeMiB` at a new temp dir, or null when this process may not mount. */
function privateTmpfs(sizeMiB: number): { dir: string; remove(): void } | null {
  const dir = mkdtempSync(path.join(tmpdir(), 'dbpilot-disk-'));
  const r = spawnSync('mount', ['-t', 'tmpfs', '-o', `size=${sizeMiB}m,mode=0700`, 'tmpfs', dir], { encoding: 'utf8' });
  if (r.status !== 0) {
    rmSync(dir, { recursive: true, force: true });
    return null;
  }
  return {
    dir,
    remove: () => {
      spawnSync('umount', [dir]);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

const MiB = 1024 * 1024;

describe('data directory file system', () => {
  const fs = privateTmpfs(8) ?? (() => {
    const dir = mkdtempSync(path.join('/dev/shm', 'dbpilot-disk-'));
    return { dir, remove: () => rmSync(dir, { recursive: true, force: true }) };
  })();
  const dir = fs.dir;
  let svc: TestService;
  let P = '';

  beforeAll(async () => {
    P = serverOf(inject('pgPrimaryUrl'));
    svc = await startTestService(makeConfig({ postgres: { databases: ['postgres'], dataDirectory: dir } }));
  });
  afterAll(async () => {
    await svc?.close();
    fs.remove();
  });

  /** A scrape with df's figures, from a moment the file system held still around it. */
  async function stableScrape(): Promise<{ r: ScrapeResult; df: { size: number; avail: number } }> {
    for (let attempt = 1; ; attempt++) {
      const before = df(dir);
      const r = await scrape(svc.url);
      const after = df(dir);
      if (after.avail === before.avail && after.size === before.size) return { r, df: before };
      if (attempt === 50) throw new Error(`the file system of ${dir} changed during each of ${attempt} scrapes`);
    }
  }

  it('exports df’s size and available bytes of the data directory, labelled with the observed primary; avail follows what is written', async () => {
    const labels = { server: P, path: dir };
    const first = await stableScrape();
    expect(value(first.r.metrics, 'dbpilot_collector_success', { collector: 'filesystem' })).toBe(1);
    expect(value(first.r.metrics, 'pg_filesystem_size_bytes', labels)).toBe(first.df.size);
    expect(value(first.r.metrics, 'pg_filesystem_avail_bytes', labels)).toBe(first.df.avail);
    expect(first.df.avail).toBeLessThanOrEqual(first.df.size);

    // Two MiB written (and synced) take two MiB of the file system: df and dbpilot both say so.
    writeFileSync(path.join(dir, 'filler'), Buffer.alloc(2 * MiB, 1), { flush: true });
    const second = await stableScrape();
    expect(value(second.r.metrics, 'pg_filesystem_size_bytes', labels)).toBe(second.df.size);
    expect(value(second.r.metrics, 'pg_filesystem_avail_bytes', labels)).toBe(second.df.avail);
    const written = first.df.avail - second.df.avail;
    expect(written).toBeGreaterThanOrEqual(2 * MiB);
    expect(value(first.r.metrics, 'pg_filesystem_avail_bytes', labels) - value(second.r.metrics, 'pg_filesystem_avail_bytes', labels)).toBe(written);
  });
});
