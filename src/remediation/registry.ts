/**
 * Handlers registered by name. A name that is not a runbook handler, a duplicate, or an alert
 * mapping to a handler this build does not have fails at start — never when the alert arrives.
 */
import { HANDLER_NAMES, type Config } from '../config.js';
import { RegistryError } from '../errors.js';
import type { Handler } from './handler.js';

export class HandlerRegistry {
  private readonly handlers = new Map<string, Handler>();

  register(handler: Handler): this {
    if (!(HANDLER_NAMES as readonly string[]).includes(handler.name)) throw new RegistryError(`handler ${handler.name} is not a runbook handler (${HANDLER_NAMES.join(', ')})`);
    if (this.handlers.has(handler.name)) throw new RegistryError(`handler ${handler.name} registered twice`);
    this.handlers.set(handler.name, handler as Handler);
    return this;
  }

  has(name: string): boolean {
    return this.handlers.has(name);
  }

  get(name: string): Handler {
    const h = this.handlers.get(name);
    if (!h) throw new RegistryError(`no handler named ${name}; available: ${[...this.handlers.keys()].join(', ') || 'none'}`);
    return h;
  }

  get names(): string[] {
    return [...this.handlers.keys()];
  }

  /** Checks the configuration's alert → handler mapping against what is registered. */
  validate(config: Config): void {
    for (const [alert, name] of Object.entries(config.alerts)) {
      if (name !== 'none' && !this.handlers.has(name)) {
        throw new RegistryError(`alerts.${alert}: handler ${name} is not available in this build (available: ${this.names.join(', ')})`);
      }
    }
  }
}
