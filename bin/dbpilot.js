#!/usr/bin/env node
// From a checkout (src/ present) the TypeScript sources run through tsx; an image built with
// `npm run build` ships dist/ only and runs the compiled JavaScript.
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));
let mod;
if (existsSync(`${root}src/cli.ts`)) {
  const { register } = await import('tsx/esm/api');
  register();
  mod = await import('../src/cli.ts');
} else {
  mod = await import('../dist/cli.js');
}
await mod.main(process.argv);
