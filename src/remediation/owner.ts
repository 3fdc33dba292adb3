/**
 * Who owns a run or a target lock: `<label>/<pid>/<token>`, the label being the pod (or host) name, or
 * `cli:<user>` for an on-call engineer's command. The token is new for every process, so a restarted
 * container whose process is PID 1 again is never mistaken for its previous incarnation. A store file
 * lives on one pod, so every owner in it is a process of this machine: alive when its pid is.
 */
import { randomUUID } from 'node:crypto';

const PROCESS_TOKEN = randomUUID().slice(0, 8);

export function processOwner(label: string): string {
  return `${label.replace(/\//g, '-')}/${process.pid}/${PROCESS_TOKEN}`;
}

export function ownerAlive(owner: string): boolean {
  const parts = owner.split('/');
  const token = parts.pop();
  const pid = Number(parts.pop());
  if (!Number.isInteger(pid) || pid <= 0) return true; // not an owner we wrote: assume it is alive
  if (pid === process.pid) return token === PROCESS_TOKEN;
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}
