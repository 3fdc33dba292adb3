/**
 * What an interactive CLI command prints to and asks on: the process's streams, or a test's own.
 * Shared by the commands that confirm with a person (backup restore, migrate-reset).
 */
import { createInterface } from 'node:readline/promises';

export interface CliIO {
  out(line: string): void;
  /** Whether a person can be asked (stdin is a terminal). */
  interactive: boolean;
  ask(question: string): Promise<string>;
}

export function processIO(): CliIO {
  return {
    out: (line) => process.stdout.write(`${line}\n`),
    interactive: Boolean(process.stdin.isTTY),
    ask: async (question) => {
      const rl = createInterface({ input: process.stdin, output: process.stdout });
      try {
        return await rl.question(question);
      } finally {
        rl.close();
      }
    },
  };
}
