/**
 * Every check `serve` makes before it acts, in one place, so `check-config` runs exactly these too:
 * a configuration that check-config accepts is one that serve starts with.
 */
import { accessSync, constants, existsSync, statSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import type { Config } from './config.js';
import { ConfigError } from './errors.js';
import { validateRemediation } from './remediation/index.js';

/** The store file can be opened (or created) here: an existing file we may write, or a directory we may create it in. */
export function checkStorePath(path: string): void {
  if (path === ':memory:') return;
  const file = resolve(path);
  if (existsSync(file)) {
    if (!statSync(file).isFile()) throw new ConfigError('store.path', `${path} exists and is not a file`);
    try {
      accessSync(file, constants.R_OK | constants.W_OK);
    } catch {
      throw new ConfigError('store.path', `${path} is not readable and writable by this user`);
    }
    return;
  }
  let dir = dirname(file);
  while (!existsSync(dir)) dir = dirname(dir);
  if (!statSync(dir).isDirectory()) throw new ConfigError('store.path', `${dir} is not a directory`);
  try {
    accessSync(dir, constants.W_OK | constants.X_OK);
  } catch {
    throw new ConfigError('store.path', `cannot create ${path}: ${dir} is not writable by this user`);
  }
}

export async function checkStartup(config: Config): Promise<void> {
  await validateRemediation(config);
  checkStorePath(config.store.path);
}
