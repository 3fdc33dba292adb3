/**
 * Credentials the way the pod gets them: IRSA. EKS injects AWS_ROLE_ARN and
 * AWS_WEB_IDENTITY_TOKEN_FILE for a ServiceAccount annotated with eks.amazonaws.com/role-arn; the
 * SDK's default chain exchanges the token at STS (AssumeRoleWithWebIdentity, here the stand-in's)
 * for temporary credentials and signs RDS requests with them and their session token. dbpilot
 * passes no credentials of its own, and none appears in its logs or messages.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config.js';
import { createBackups } from '../../src/scheduler/backups.js';
import { captureLogger } from '../support/remediation.js';
import { RdsStandin, awsConfigFor } from '../support/rds-standin.js';

const ROLE = 'arn:aws:iam::123456789012:role/dbpilot';
const TOKEN = 'eyJhbGciOiJSUzI1NiJ9.irsa-test-token.signature';
const standin = new RdsStandin({ webIdentity: { token: TOKEN, roleArn: ROLE } });
const saved: Record<string, string | undefined> = {};
let dir = '';

function setEnv(vars: Record<string, string | undefined>): void {
  for (const [k, v] of Object.entries(vars)) {
    if (!(k in saved)) saved[k] = process.env[k];
    if (v === undefined) delete process.env[k];
    else process.env[k] = v;
  }
}

beforeAll(async () => {
  await standin.start();
  standin.seedInstance({ id: 'lomash-wood-prod' });
  dir = mkdtempSync(path.join(tmpdir(), 'dbpilot-irsa-'));
  writeFileSync(path.join(dir, 'token'), TOKEN);
  writeFileSync(path.join(dir, 'bad-token'), 'eyJ.not-the-token.x');
  setEnv({
    AWS_ACCESS_KEY_ID: undefined,
    AWS_SECRET_ACCESS_KEY: undefined,
    AWS_SESSION_TOKEN: undefined,
    AWS_PROFILE: undefined,
    AWS_ROLE_ARN: ROLE,
    AWS_WEB_IDENTITY_TOKEN_FILE: path.join(dir, 'token'),
    AWS_ROLE_SESSION_NAME: 'dbpilot-0',
    // STS at the stand-in (in a pod: sts.<region>.amazonaws.com); never instance metadata from a test.
    AWS_ENDPOINT_URL_STS: standin.url,
    AWS_EC2_METADATA_DISABLED: 'true',
    AWS_CONFIG_FILE: path.join(dir, 'none'),
    AWS_SHARED_CREDENTIALS_FILE: path.join(dir, 'none'),
  });
});
afterAll(async () => {
  setEnv(saved);
  await standin.close();
  rmSync(dir, { recursive: true, force: true });
});

describe('IRSA through the SDK’s default chain', () => {
  it('exchanges the web-identity token at STS and signs RDS requests with the session credentials', async () => {
    const cap = captureLogger('debug');
    const backups = await createBackups(parseConfig({ aws: awsConfigFor(standin) }, {}).aws!, { store: null, logger: cap.logger });
    const r = await backups.snapshot('irsa');
    backups.close();
    expect(r.status).toBe('available');
    const sts = standin.calls('AssumeRoleWithWebIdentity');
    expect(sts.length).toBeGreaterThan(0);
    expect(sts[0]!.params).toMatchObject({ RoleArn: ROLE, RoleSessionName: 'dbpilot-0' });
    const create = standin.calls('CreateDBSnapshot')[0]!;
    expect(create.status).toBe(200);
    expect(create.accessKeyId).toMatch(/^ASIA/);
    expect(create.sessionToken).toMatch(/^IQoJb3JpZ2luX2Vj/);
    expect(create.authorization).toMatch(/SignedHeaders=[^,]*x-amz-security-token/);
    const text = cap.log.text();
    expect(text).not.toContain(TOKEN);
    expect(text).not.toContain(create.sessionToken!);
  });

  it('a token STS refuses is a credentials error that says where to look', async () => {
    setEnv({ AWS_WEB_IDENTITY_TOKEN_FILE: path.join(dir, 'bad-token') });
    const backups = await createBackups(parseConfig({ aws: awsConfigFor(standin) }, {}).aws!, { store: null, logger: captureLogger('silent').logger });
    const err = await backups.describeInstance().then(
      () => null,
      (e: unknown) => e,
    );
    backups.close();
    expect(err).toMatchObject({ code: expect.stringMatching(/^DBPILOT_RDS_(CREDENTIALS|NO_CREDENTIALS)$/) });
    expect((err as Error).message).toMatch(/serviceAccount\.awsRoleArn/);
    expect((err as Error).message).not.toContain('not-the-token');
  });
});
