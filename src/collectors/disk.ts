/**
 * The data directory's file system (runbook scenario 3, step 1: `df -h /var/lib/postgresql/data`),
 * read with statfs where dbpilot runs beside PostgreSQL with the volume mounted. Labelled with the
 * observed primary's server, as the data directory is the primary's.
 */
import { statfs } from 'node:fs/promises';
import type { Metrics } from '../metrics.js';
import { SampleSet, type Collector, type ObservedPrimary } from './collector.js';

export function diskCollector(metrics: Metrics, primary: ObservedPrimary, path: string): Collector {
  const size = metrics.gauge('pg_filesystem_size_bytes', 'Size of the file system holding the PostgreSQL data directory.', ['server', 'path']);
  const avail = metrics.gauge('pg_filesystem_avail_bytes', 'Bytes available to PostgreSQL (non-root) on the data directory\'s file system.', ['server', 'path']);
  return {
    name: 'filesystem',
    gauges: [size, avail],
    async collect() {
      const set = new SampleSet();
      const [{ server }, st] = await Promise.all([primary(), statfs(path)]);
      set.set(size, { server, path }, st.blocks * st.bsize);
      set.set(avail, { server, path }, st.bavail * st.bsize);
      return set;
    },
  };
}
