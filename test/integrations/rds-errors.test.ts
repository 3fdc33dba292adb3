/**
 * The mapping of AWS's errors to dbpilot's codes and messages, unit-tested with aws-sdk-client-mock
 * (the SDK's own exception classes, as the SDK throws them after its retries): what an on-call reads
 * must say what happened and what to do, and carry no credential. The behaviour over the wire
 * (retries, status codes, XML) is tested against the stand-in in rds.test.ts.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { mockClient } from 'aws-sdk-client-mock';
import {
  CreateDBSnapshotCommand,
  DBInstanceAlreadyExistsFault,
  DBInstanceNotFoundFault,
  DBSnapshotAlreadyExistsFault,
  DescribeDBInstancesCommand,
  InvalidDBInstanceStateFault,
  PointInTimeRestoreNotEnabledFault,
  RDSClient,
  RDSServiceException,
  RestoreDBInstanceToPointInTimeCommand,
  SnapshotQuotaExceededFault,
  StorageQuotaExceededFault,
} from '@aws-sdk/client-rds';
import { RdsClient, RdsError, mapRdsError } from '../../src/integrations/rds.js';

const rds = mockClient(RDSClient);
afterEach(() => rds.reset());

const meta = (httpStatusCode: number, attempts = 1) => ({ $metadata: { httpStatusCode, attempts, requestId: 'req-1' } });
const client = () => RdsClient.create({ region: 'eu-west-2', maxAttempts: 3, requestTimeoutMs: 1000, credentials: { accessKeyId: 'AKIAUNIT', secretAccessKey: 'unit-secret-never-shown' } });

function generic(name: string, message: string, status: number, fault: 'client' | 'server' = 'client', attempts = 1): RDSServiceException {
  return new RDSServiceException({ name, message, $fault: fault, ...meta(status, attempts) });
}

describe('AWS errors become clear messages with stable codes', () => {
  it.each([
    ['quota exceeded', new SnapshotQuotaExceededFault({ message: 'Cannot create more than 100 manual snapshots', ...meta(400) }), 'DBPILOT_RDS_SNAPSHOT_QUOTA', /quota of manual DB snapshots in eu-west-2 is used up.*Delete manual snapshots.*Service Quotas/],
    ['instance not in a state to snapshot', new InvalidDBInstanceStateFault({ message: 'Cannot create a snapshot because the database instance lomash-wood-prod is not currently in the available state.', ...meta(400) }), 'DBPILOT_RDS_INSTANCE_STATE', /not in a state that allows this.*backing up.*aws rds describe-db-instances --db-instance-identifier lomash-wood-prod/],
    ['snapshot already exists', new DBSnapshotAlreadyExistsFault({ message: 'Cannot create the snapshot because a snapshot with the identifier x already exists.', ...meta(400) }), 'DBPILOT_RDS_SNAPSHOT_EXISTS', /already exists.*try again in a minute/],
    ['throttling (after the SDK’s retries)', generic('Throttling', 'Rate exceeded', 400, 'client', 5), 'DBPILOT_RDS_THROTTLED', /throttled the request \(after 5 attempts\).*retries throttling/],
    ['missing permissions', generic('AccessDenied', 'User: arn:aws:sts::1:assumed-role/dbpilot/x is not authorized to perform: rds:CreateDBSnapshot', 403), 'DBPILOT_RDS_ACCESS_DENIED', /not authorized to perform: rds:CreateDBSnapshot.*IAM policy/],
    ['an expired web-identity session', generic('ExpiredToken', 'The security token included in the request is expired', 403), 'DBPILOT_RDS_CREDENTIALS', /refused dbpilot's credentials \(ExpiredToken.*serviceAccount\.awsRoleArn/],
    ['no instance by that name', new DBInstanceNotFoundFault({ message: 'DBInstance lomash-wood-prod not found.', ...meta(404) }), 'DBPILOT_RDS_INSTANCE_NOT_FOUND', /no DB instance lomash-wood-prod in eu-west-2.*aws\.dbInstanceIdentifier/],
    ['a target that exists', new DBInstanceAlreadyExistsFault({ message: 'DB instance already exists', ...meta(400) }), 'DBPILOT_RDS_TARGET_EXISTS', /already exists: a restore always creates a new instance/],
    ['PITR not enabled', new PointInTimeRestoreNotEnabledFault({ message: 'not enabled', ...meta(400) }), 'DBPILOT_RDS_PITR_DISABLED', /backup retention period is 0/],
    ['storage quota', new StorageQuotaExceededFault({ message: 'quota', ...meta(400) }), 'DBPILOT_RDS_STORAGE_QUOTA', /storage quota/],
    ['a 5xx after the retries', generic('InternalFailure', 'We encountered an internal error', 500, 'server', 5), 'DBPILOT_RDS_UNAVAILABLE', /did not answer \(after 5 attempts\)/],
  ])('%s', async (_what, error, code, message) => {
    rds.on(CreateDBSnapshotCommand).rejects(error);
    const c = await client();
    const err = await c.createSnapshot('lomash-wood-prod', 'lomash-wood-manual-202602181430', {}).then(
      () => null,
      (e: unknown) => e,
    );
    c.close();
    expect(err).toBeInstanceOf(RdsError);
    expect(err).toMatchObject({ code, message: expect.stringMatching(message) });
    expect((err as RdsError).message).toMatch(/^RDS CreateDBSnapshot: /);
    expect((err as RdsError).details.action).toBe('CreateDBSnapshot');
    expect((err as RdsError).message).not.toContain('unit-secret-never-shown');
  });

  it('no credentials anywhere in the default chain', () => {
    const e = Object.assign(new Error('Could not load credentials from any providers'), { name: 'CredentialsProviderError' });
    expect(mapRdsError(e, { action: 'DescribeDBInstances', instance: 'lomash-wood-prod', region: 'eu-west-2' })).toMatchObject({
      code: 'DBPILOT_RDS_NO_CREDENTIALS',
      message: expect.stringMatching(/default chain.*eks\.amazonaws\.com\/role-arn \(serviceAccount\.awsRoleArn\)/),
    });
  });

  it('a network error', async () => {
    rds.on(DescribeDBInstancesCommand).rejects(Object.assign(new Error('connect ECONNREFUSED 10.0.0.1:443'), { name: 'Error', $metadata: { attempts: 3 } }));
    const c = await client();
    await expect(c.describeInstance('lomash-wood-prod')).rejects.toMatchObject({ code: 'DBPILOT_RDS_UNAVAILABLE', message: expect.stringMatching(/did not answer \(after 3 attempts\): connect ECONNREFUSED/) });
    c.close();
  });

  it('describe* answers "not there" as null, not as an error', async () => {
    rds.on(DescribeDBInstancesCommand).rejects(new DBInstanceNotFoundFault({ message: 'DBInstance x not found.', ...meta(404) }));
    const c = await client();
    expect(await c.describeInstance('x')).toBeNull();
    c.close();
  });

  it('an unknown AWS error keeps its code and message', async () => {
    rds.on(RestoreDBInstanceToPointInTimeCommand).rejects(generic('KMSKeyNotAccessibleFault', 'The specified KMS key is not accessible', 400));
    const c = await client();
    await expect(c.restoreToTime({ source: 'lomash-wood-prod', target: 'x', time: new Date(), tags: {} })).rejects.toMatchObject({
      code: 'DBPILOT_RDS_FAILED',
      message: 'RDS RestoreDBInstanceToPointInTime: KMSKeyNotAccessibleFault: The specified KMS key is not accessible',
    });
    c.close();
  });
});
