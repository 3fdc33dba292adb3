/**
 * The Alertmanager webhook payload, version 4 (see test/fixtures/alertmanager/). Validated at
 * the edge so the engine only ever sees well-formed alerts. Unknown top-level fields are tolerated
 * (Alertmanager adds fields over time); what the engine relies on is required and typed.
 */
import { z } from 'zod';

const labelSet = z.record(z.string().regex(/^[a-zA-Z_][a-zA-Z0-9_]*$/, 'invalid label name').max(256), z.string().max(16_384));

/** RFC 3339, as Go's time.Time marshals it (fraction of up to nine digits, Z or an offset). */
const RFC3339 = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$/;

// Alertmanager writes Go's zero time "0001-01-01T00:00:00Z" as endsAt while an alert fires.
const timestamp = z
  .string()
  .max(64)
  .refine((s) => RFC3339.test(s) && !Number.isNaN(Date.parse(s)), 'not an RFC 3339 timestamp');

export const alertSchema = z.object({
  status: z.enum(['firing', 'resolved']),
  labels: labelSet.refine((l) => typeof l.alertname === 'string' && l.alertname.trim().length > 0, 'labels.alertname is required and must not be blank'),
  annotations: labelSet.default({}),
  startsAt: timestamp,
  endsAt: timestamp.optional(),
  generatorURL: z.string().max(8192).optional(),
  fingerprint: z.string().regex(/^[0-9a-f]{1,64}$/, 'fingerprint must be hexadecimal'),
});

export const webhookSchema = z.object({
  version: z.literal('4', { message: 'only Alertmanager webhook payload version "4" is supported' }),
  receiver: z.string().max(1024),
  status: z.enum(['firing', 'resolved']),
  alerts: z.array(alertSchema).min(1, 'alerts must not be empty').max(10_000),
  groupLabels: labelSet.default({}),
  commonLabels: labelSet.default({}),
  commonAnnotations: labelSet.default({}),
  externalURL: z.string().max(8192).default(''),
  groupKey: z.string().max(16_384).default(''),
  truncatedAlerts: z.number().int().min(0).default(0),
});

export type Alert = z.output<typeof alertSchema>;
export type WebhookPayload = z.output<typeof webhookSchema>;

/** The first problem, as `alerts[0].labels.alertname: …`, for a 400 answer. */
export function describeIssue(error: z.ZodError): string {
  const issue = error.issues[0]!;
  const path = issue.path.map((p) => (typeof p === 'number' ? `[${p}]` : `.${String(p)}`)).join('').replace(/^\./, '');
  return path ? `${path}: ${issue.message}` : issue.message;
}
