/**
 * Approvers' credentials and the advertised webhook address: validated at the edge, with the path of
 * the bad field, so a typo cannot let the webhook's token approve or two people share one.
 */
import { describe, expect, it } from 'vitest';
import { parseConfig } from '../src/config.js';
import { advertisedUrl } from '../src/remediation/index.js';
import { approverFor } from '../src/remediation/routes.js';

const base = { postgres: { primary: { url: 'postgres://dbpilot@db.test:5433/postgres' } }, redis: { url: 'redis://cache.test:6380' } };

describe('approvers', () => {
  it('accepts named approvers with tokens of their own', () => {
    const cfg = parseConfig({ ...base, webhook: { token: 'webhook-token-0123456789' }, approvers: [{ name: 'alice@example', token: 'alice-token-0123456789' }] }, {});
    expect(cfg.approvers).toEqual([{ name: 'alice@example', token: 'alice-token-0123456789' }]);
  });

  it.each([
    [{ webhook: { token: 'same-token-0123456789' }, approvers: [{ name: 'a', token: 'same-token-0123456789' }] }, 'approvers[0].token: must differ from the webhook token and from every other approver token'],
    [{ approvers: [{ name: 'a', token: 'token-a-0123456789' }, { name: 'b', token: 'token-a-0123456789' }] }, 'approvers[1].token: must differ from the webhook token and from every other approver token'],
    [{ approvers: [{ name: 'a', token: 'token-a-0123456789' }, { name: 'a', token: 'token-b-0123456789' }] }, 'approvers[1].name: a is listed twice'],
    [{ approvers: [{ name: 'a', token: 'short' }] }, 'approvers[0].token: an approver token must be at least 16 characters'],
    [{ approvers: [{ name: 'a b', token: 'token-a-0123456789' }] }, 'approvers[0].name: a name of letters, digits and . _ @ - (at most 64)'],
  ])('refuses %j', (doc, message) => {
    expect(() => parseConfig({ ...base, ...doc }, {})).toThrow(message);
  });

  it('names the approver whose bearer token it is, and nobody for another scheme or token', () => {
    const approvers = [
      { name: 'alice', token: 'alice-token-0123456789' },
      { name: 'bob', token: 'bob-token-0123456789xx' },
    ];
    expect(approverFor('Bearer bob-token-0123456789xx', approvers)).toBe('bob');
    expect(approverFor('bearer  alice-token-0123456789', approvers)).toBe('alice');
    expect(approverFor('Bearer alice-token-012345678', approvers)).toBeNull();
    expect(approverFor(`Basic ${Buffer.from('alice:alice-token-0123456789').toString('base64')}`, approvers)).toBeNull();
    expect(approverFor(undefined, approvers)).toBeNull();
  });
});

describe('the advertised webhook address', () => {
  it('is webhook.advertiseUrl when set, else http://$POD_IP:<listen port>, else none', () => {
    const cfg = (extra: Record<string, unknown>) => parseConfig({ ...base, listen: '0.0.0.0:9630', ...extra }, {});
    expect(advertisedUrl(cfg({ webhook: { advertiseUrl: 'https://dbpilot-0.dbpilot:9630' } }), { POD_IP: '10.0.0.5' })).toBe('https://dbpilot-0.dbpilot:9630');
    expect(advertisedUrl(cfg({}), { POD_IP: '10.0.0.5' })).toBe('http://10.0.0.5:9630');
    expect(advertisedUrl(cfg({}), { POD_IP: 'fd00::5' })).toBe('http://[fd00::5]:9630');
    expect(advertisedUrl(cfg({}), {})).toBeUndefined();
  });
});
