/** What `serve` adds to the exporter: the remediation engine, its routes, and its lifecycle. */
import type { AppOptions } from './app.js';
import type { Runtime } from './runtime.js';
import { createRemediation } from './remediation/index.js';
import { remediationRoutes } from './remediation/routes.js';

export async function extendService(runtime: Runtime): Promise<Omit<AppOptions, 'runtime'>> {
  const remediation = await createRemediation(runtime);
  runtime.onClose(() => remediation.close());
  await remediation.start();
  return {
    ready: () => true,
    extraRoutes: remediationRoutes(remediation.engine, runtime.config, runtime.metrics, () => remediation.leader.isLeader()),
  };
}
