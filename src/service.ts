/** What `serve` adds to the exporter: the remediation engine, its routes, and its lifecycle. */
import type { AppOptions } from './app.js';
import type { Runtime } from './runtime.js';
import { createRemediation } from './remediation/index.js';
import { remediationRoutes } from './remediation/routes.js';

export interface PreparedService {
  options: Omit<AppOptions, 'runtime'>;
  /** Begins acting (outbox, leader election, resume): called only once the port is bound. */
  start(): Promise<void>;
}

export async function prepareService(runtime: Runtime): Promise<PreparedService> {
  const remediation = await createRemediation(runtime);
  runtime.onClose(() => remediation.close());
  return {
    options: {
      ready: () => true,
      extraRoutes: remediationRoutes(remediation.engine, runtime.config, runtime.metrics, remediation.leadership),
    },
    start: () => remediation.start(),
  };
}
