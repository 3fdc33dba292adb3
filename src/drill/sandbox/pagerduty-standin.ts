/**
 * A strict local stand-in for the PagerDuty Events API v2 (`POST /v2/enqueue`) over real HTTP.
 *
 * It checks events the way the real service does (routing key length, event actions, the trigger
 * payload, dedup key rules) and answers with the service's shapes: 202 `{status, message, dedup_key}`
 * or 400 `{status: 'invalid event', message, errors}`. Tests script failures with `respondWith`
 * (500 ×3, 429 with Retry-After, a slow answer) and `down()`/`up()` (connection refused, or 503), and
 * assert delivery from what it recorded: every request, and every event it accepted.
 *
 * Like the real service it is at-least-once from the sender's view: an event whose answer arrives
 * after the sender gave up (a `delayMs` longer than the client's timeout) is still accepted.
 *
 * Like the real service it rate-limits per routing key: the Events API takes about 120 events a
 * minute per integration key and answers 429 beyond that (`rateLimit`, a sliding window; tests
 * shrink the window to see it in seconds). It also counts how many requests were in flight at once.
 */
import { randomUUID } from 'node:crypto';
import { createServer, type IncomingHttpHeaders, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

export type StandinAction = 'trigger' | 'acknowledge' | 'resolve';

const ACTIONS: readonly string[] = ['trigger', 'acknowledge', 'resolve'];
const SEVERITIES: readonly string[] = ['critical', 'error', 'warning', 'info'];
const ROUTING_KEY_LENGTH = 32;
const DEDUP_KEY_MAX = 255;
const SUMMARY_MAX = 1024;
/** The Events API's documented size limit for one event. */
const MAX_BODY_BYTES = 512 * 1024;

export interface ScriptedResponse {
  status: number;
  /** Extra response headers, e.g. `{ 'retry-after': '2' }`. */
  headers?: Record<string, string>;
  /** Response body: an object is sent as JSON, a string as is. Defaults to a PagerDuty-like body. */
  body?: unknown;
  /** Wait this long before answering (to provoke client timeouts). */
  delayMs?: number;
}

export interface RespondOptions {
  headers?: Record<string, string>;
  body?: unknown;
  /** Shorthand for a `retry-after` header (seconds, or an HTTP-date). */
  retryAfter?: number | string;
  delayMs?: number;
}

export interface RecordedRequest {
  method: string;
  path: string;
  headers: IncomingHttpHeaders;
  /** The raw body as received (empty when larger than the size limit). */
  body: string;
  /** The parsed body when it was JSON. */
  json?: unknown;
  /** What the stand-in answered. */
  status: number;
  /** Validation errors, when the event was invalid. */
  errors?: string[];
  at: number;
}

export interface AcceptedEvent {
  routingKey: string;
  action: StandinAction;
  dedupKey: string;
  event: Record<string, unknown>;
  at: number;
}

export type DownMode = 'refuse' | '503';

export interface PagerDutyStandinOptions {
  /** Events accepted per routing key within `windowMs`; beyond that, 429. Default 120 per 60 s, as PagerDuty. */
  rateLimit?: { events: number; windowMs: number } | null;
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

const ISO_8601 =
  /^(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2})(?::(\d{2})(?:[.,]\d+)?)?(?:Z|[+-]\d{2}(?::?\d{2})?)$/;

/** Date-time in ISO 8601 with a zone (`Z`, `+01:00`, `+0000`), and a real calendar date. */
export function isIso8601(value: string): boolean {
  const m = ISO_8601.exec(value);
  if (!m) return false;
  const [y, mo, d, h, mi, s] = m.slice(1).map((x) => (x === undefined ? 0 : Number(x)));
  if (mo! < 1 || mo! > 12 || h! > 23 || mi! > 59 || s! > 60) return false;
  const dim = new Date(Date.UTC(y!, mo!, 0)).getUTCDate();
  return d! >= 1 && d! <= dim;
}

function optionalString(obj: Record<string, unknown>, field: string, where: string, errors: string[]): void {
  if (field in obj && typeof obj[field] !== 'string') errors.push(`'${where}${field}' must be a string`);
}

/**
 * Checks one Events API v2 event; returns the reasons it is invalid (empty when valid).
 * The messages never repeat the routing key.
 */
export function validateEvent(body: unknown): string[] {
  const errors: string[] = [];
  if (!isObject(body)) return ['the event must be a JSON object'];

  const key = body.routing_key;
  if (typeof key !== 'string' || key.length !== ROUTING_KEY_LENGTH) {
    errors.push(`'routing_key' must be a string of exactly ${ROUTING_KEY_LENGTH} characters`);
  }

  const action = body.event_action;
  if (typeof action !== 'string' || !ACTIONS.includes(action)) {
    errors.push(`'event_action' must be one of ${ACTIONS.join(', ')}`);
  }

  if ('dedup_key' in body) {
    const dk = body.dedup_key;
    if (typeof dk !== 'string') errors.push(`'dedup_key' must be a string`);
    else if (dk.length > DEDUP_KEY_MAX) errors.push(`'dedup_key' is longer than ${DEDUP_KEY_MAX} characters`);
  }
  if ((action === 'acknowledge' || action === 'resolve') && (typeof body.dedup_key !== 'string' || body.dedup_key.trim() === '')) {
    errors.push(`'dedup_key' is required for ${action} events`);
  }

  if (action === 'trigger') {
    const p = body.payload;
    if (!isObject(p)) {
      errors.push(`'payload' is required for trigger events and must be an object`);
    } else {
      if (typeof p.summary !== 'string' || p.summary.trim() === '') errors.push(`'payload.summary' is required`);
      else if (p.summary.length > SUMMARY_MAX) errors.push(`'payload.summary' is longer than ${SUMMARY_MAX} characters`);
      if (typeof p.source !== 'string' || p.source.trim() === '') errors.push(`'payload.source' is required`);
      if (typeof p.severity !== 'string' || !SEVERITIES.includes(p.severity)) {
        errors.push(`'payload.severity' must be one of ${SEVERITIES.join(', ')}`);
      }
      if ('timestamp' in p && (typeof p.timestamp !== 'string' || !isIso8601(p.timestamp))) {
        errors.push(`'payload.timestamp' must be an ISO 8601 date-time`);
      }
      for (const f of ['component', 'group', 'class']) optionalString(p, f, 'payload.', errors);
      if ('custom_details' in p && !isObject(p.custom_details)) errors.push(`'payload.custom_details' must be an object`);
    }
  }

  optionalString(body, 'client', '', errors);
  optionalString(body, 'client_url', '', errors);

  if ('links' in body) {
    if (!Array.isArray(body.links)) errors.push(`'links' must be an array`);
    else
      body.links.forEach((l: unknown, i) => {
        if (!isObject(l) || typeof l.href !== 'string' || l.href === '') errors.push(`'links[${i}].href' is required`);
        else optionalString(l, 'text', `links[${i}].`, errors);
      });
  }
  if ('images' in body) {
    if (!Array.isArray(body.images)) errors.push(`'images' must be an array`);
    else
      body.images.forEach((im: unknown, i) => {
        if (!isObject(im) || typeof im.src !== 'string' || im.src === '') errors.push(`'images[${i}].src' is required`);
      });
  }
  return errors;
}

interface QueuedResponse {
  response: ScriptedResponse;
  remaining: number;
}

export class PagerDutyStandin {
  /** Every request received, in order (including those answered by a script or while down in 503 mode). */
  readonly requests: RecordedRequest[] = [];
  /** Every event answered with 202, in order. */
  readonly accepted: AcceptedEvent[] = [];

  /** Requests answered 429 because their routing key was over the rate limit. */
  throttled = 0;
  /** The most requests that were being handled at the same time, since start or reset(). */
  maxConcurrent = 0;
  private concurrent = 0;
  private readonly rateLimit: { events: number; windowMs: number } | null;
  /** Acceptance times per routing key, for the sliding window. */
  private readonly recent = new Map<string, number[]>();

  constructor(opts: PagerDutyStandinOptions = {}) {
    this.rateLimit = opts.rateLimit === undefined ? { events: 120, windowMs: 60_000 } : opts.rateLimit;
  }

  private server: Server | undefined;
  private port = 0;
  private listening = false;
  private mode: 'up' | DownMode = 'up';
  private readonly queue: QueuedResponse[] = [];
  /** Delayed answers in flight, so reset() and close() can cancel them. */
  private readonly delays = new Map<NodeJS.Timeout, (completed: boolean) => void>();

  /** The enqueue URL (`http://127.0.0.1:<port>/v2/enqueue`); valid after start(). */
  get url(): string {
    if (!this.port) throw new Error('PagerDuty stand-in not started');
    return `http://127.0.0.1:${this.port}/v2/enqueue`;
  }

  async start(): Promise<{ url: string; port: number }> {
    if (this.server) throw new Error('PagerDuty stand-in already started');
    this.server = createServer((req, res) => void this.handle(req, res));
    // A client that vanishes mid-request must not crash the stand-in.
    this.server.on('clientError', (_err, socket) => socket.destroy());
    await this.listen(0);
    return { url: this.url, port: this.port };
  }

  async close(): Promise<void> {
    this.cancelDelays();
    if (this.server && this.listening) await this.stopListening();
    this.server = undefined;
  }

  /**
   * Queues a scripted answer for the next `times` requests (default 1), before any validation.
   * A scripted 202 still validates and records the event like a normal request.
   */
  respondWith(status: number, times = 1, opts: RespondOptions = {}): this {
    const headers = { ...(opts.headers ?? {}) };
    if (opts.retryAfter !== undefined) headers['retry-after'] = String(opts.retryAfter);
    const response: ScriptedResponse = { status, headers };
    if (opts.body !== undefined) response.body = opts.body;
    if (opts.delayMs !== undefined) response.delayMs = opts.delayMs;
    this.queue.push({ response, remaining: times });
    return this;
  }

  /**
   * Takes the service away. `refuse` (default) closes the listener so connections are refused;
   * `503` keeps listening and answers every request 503.
   */
  async down(opts: { mode?: DownMode } = {}): Promise<void> {
    const mode = opts.mode ?? 'refuse';
    if (!this.server) throw new Error('PagerDuty stand-in not started');
    this.mode = mode;
    if (mode === 'refuse' && this.listening) await this.stopListening();
    if (mode === '503' && !this.listening) await this.listen(this.port);
  }

  /** Brings the service back on the same port. */
  async up(): Promise<void> {
    if (!this.server) throw new Error('PagerDuty stand-in not started');
    this.mode = 'up';
    if (!this.listening) await this.listen(this.port);
  }

  /**
   * Forgets recorded requests, accepted events and scripted answers, and drops delayed answers still
   * in flight (their connections are cut and their events not accepted), so nothing from one test
   * lands in the next. The service stays up or down as it is.
   */
  reset(): void {
    this.cancelDelays();
    this.requests.length = 0;
    this.accepted.length = 0;
    this.queue.length = 0;
    this.recent.clear();
    this.throttled = 0;
    this.maxConcurrent = 0;
  }

  /** How many events with this dedup key (and action, when given) were accepted. */
  acceptedCount(dedupKey: string, action?: StandinAction): number {
    return this.accepted.filter((e) => e.dedupKey === dedupKey && (action === undefined || e.action === action)).length;
  }

  private listen(port: number): Promise<void> {
    const server = this.server!;
    return new Promise((resolve, reject) => {
      const onError = (err: Error) => reject(err);
      server.once('error', onError);
      server.listen(port, '127.0.0.1', () => {
        server.off('error', onError);
        this.port = (server.address() as AddressInfo).port;
        this.listening = true;
        resolve();
      });
    });
  }

  private stopListening(): Promise<void> {
    const server = this.server!;
    return new Promise((resolve, reject) => {
      server.close((err) => {
        this.listening = false;
        if (err) reject(err);
        else resolve();
      });
      // Keep-alive and in-flight connections too: "down" means nothing gets through.
      server.closeAllConnections();
    });
  }

  /** Whether one more event of this routing key fits in the sliding window (and counts it if so). */
  private admit(routingKey: string): boolean {
    const { events, windowMs } = this.rateLimit!;
    const now = Date.now();
    const times = (this.recent.get(routingKey) ?? []).filter((t) => t > now - windowMs);
    if (times.length >= events) {
      this.recent.set(routingKey, times);
      return false;
    }
    times.push(now);
    this.recent.set(routingKey, times);
    return true;
  }

  private nextScripted(): ScriptedResponse | undefined {
    const head = this.queue[0];
    if (!head) return undefined;
    head.remaining -= 1;
    if (head.remaining <= 0) this.queue.shift();
    return head.response;
  }

  /** Resolves true after `ms`, or false if cancelled first. */
  private sleep(ms: number): Promise<boolean> {
    return new Promise((resolve) => {
      const t = setTimeout(() => {
        this.delays.delete(t);
        resolve(true);
      }, ms);
      this.delays.set(t, resolve);
    });
  }

  private cancelDelays(): void {
    for (const [t, resolve] of this.delays) {
      clearTimeout(t);
      resolve(false);
    }
    this.delays.clear();
  }

  private async readBody(req: IncomingMessage): Promise<{ text: string; tooLarge: boolean }> {
    const chunks: Buffer[] = [];
    let size = 0;
    let tooLarge = false;
    for await (const chunk of req as AsyncIterable<Buffer>) {
      size += chunk.length;
      if (size > MAX_BODY_BYTES) tooLarge = true;
      else chunks.push(chunk);
    }
    return { text: tooLarge ? '' : Buffer.concat(chunks).toString('utf8'), tooLarge };
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    this.concurrent += 1;
    this.maxConcurrent = Math.max(this.maxConcurrent, this.concurrent);
    res.on('close', () => (this.concurrent -= 1));
    let body = { text: '', tooLarge: false };
    try {
      body = await this.readBody(req);
    } catch {
      res.destroy();
      return;
    }
    const path = (req.url ?? '/').split('?')[0] ?? '/';
    const record: RecordedRequest = {
      method: req.method ?? '',
      path,
      headers: req.headers,
      body: body.text,
      status: 0,
      at: Date.now(),
    };
    this.requests.push(record);

    const send = (status: number, payload: unknown, headers: Record<string, string> = {}) => {
      record.status = status;
      if (res.destroyed || res.writableEnded) return;
      const text = typeof payload === 'string' ? payload : JSON.stringify(payload);
      res.writeHead(status, {
        'content-type': typeof payload === 'string' ? 'text/plain; charset=utf-8' : 'application/json',
        ...headers,
      });
      res.end(text);
    };

    if (this.mode === '503') {
      send(503, { status: 'unavailable', message: 'Service Unavailable' });
      return;
    }
    if (path !== '/v2/enqueue') {
      send(404, { status: 'not found', message: 'Not Found' });
      return;
    }
    if (req.method !== 'POST') {
      send(405, { status: 'method not allowed', message: 'Method Not Allowed' }, { allow: 'POST' });
      return;
    }

    const scripted = this.nextScripted();
    if (scripted?.delayMs && !(await this.sleep(scripted.delayMs))) {
      res.destroy();
      return;
    }
    if (scripted && scripted.status !== 202) {
      send(scripted.status, scripted.body ?? defaultBody(scripted.status), scripted.headers);
      return;
    }

    if (body.tooLarge) {
      send(413, { status: 'invalid event', message: 'Event object is too large', errors: [`the event exceeds ${MAX_BODY_BYTES} bytes`] });
      return;
    }
    let json: unknown;
    try {
      json = JSON.parse(body.text);
      record.json = json;
    } catch {
      record.errors = ['the request body is not valid JSON'];
      send(400, { status: 'invalid event', message: 'Event object is invalid', errors: record.errors });
      return;
    }
    const errors = validateEvent(json);
    if (errors.length > 0) {
      record.errors = errors;
      send(400, { status: 'invalid event', message: 'Event object is invalid', errors });
      return;
    }
    const event = json as Record<string, unknown>;
    if (this.rateLimit && !this.admit(event.routing_key as string)) {
      this.throttled += 1;
      send(429, defaultBody(429));
      return;
    }
    const dedupKey = typeof event.dedup_key === 'string' ? event.dedup_key : randomUUID().replaceAll('-', '');
    this.accepted.push({
      routingKey: event.routing_key as string,
      action: event.event_action as StandinAction,
      dedupKey,
      event,
      at: Date.now(),
    });
    send(202, scripted?.body ?? { status: 'success', message: 'Event processed', dedup_key: dedupKey }, scripted?.headers);
  }
}

function defaultBody(status: number): unknown {
  if (status === 429) return { status: 'throttle event', message: 'Requests for this service are arriving too quickly. Please retry later.' };
  if (status >= 500) return { status: 'error', message: 'Internal Server Error' };
  if (status === 400) return { status: 'invalid event', message: 'Event object is invalid', errors: ['scripted rejection'] };
  return { status: 'error', message: `HTTP ${status}` };
}
