/**
 * A strict local stand-in for the AWS RDS Query API (2014-10-31) over real HTTP, driven only through
 * the real @aws-sdk/client-rds (point its `endpoint` here).
 *
 * The wire format is RDS's: `POST /` with a form-encoded body `Action=…&Version=2014-10-31&…`
 * (lists as `Tags.Tag.1.Key`, `VpcSecurityGroupIds.VpcSecurityGroupId.1`), answered with
 * `<ActionResponse xmlns="http://rds.amazonaws.com/doc/2014-10-31/"><ActionResult>…</ActionResult>
 * <ResponseMetadata><RequestId>…` and errors as `<ErrorResponse><Error><Type>Sender</Type><Code>…
 * </Code><Message>…</Message></Error><RequestId>…` with RDS's status codes (the shapes the SDK's
 * AwsQueryProtocol / XmlShapeDeserializer read: member names from the RDS model, e.g. DBSnapshots
 * holding DBSnapshot elements, TagList holding Tag elements).
 *
 * Every request must be SigV4-signed: the Authorization header is parsed (algorithm, credential
 * scope `<key>/<date>/<region>/rds/aws4_request`, signed headers including host and x-amz-date,
 * a 64-hex signature) and the signature is recomputed with the secret of a known key, session token
 * included — AWS's own 403s (MissingAuthenticationToken, IncompleteSignature, InvalidClientTokenId,
 * SignatureDoesNotMatch) otherwise.
 *
 * It rejects what RDS rejects: identifiers that break RDS's rules (InvalidParameterValue, RDS's own
 * message), a duplicate snapshot name (DBSnapshotAlreadyExists), a snapshot beyond the account's
 * manual-snapshot quota (SnapshotQuotaExceeded, 100 by default), a snapshot of an instance that is
 * not available — RDS takes one at a time, the instance is `backing-up` meanwhile —
 * (InvalidDBInstanceState), restoring onto an existing instance (DBInstanceAlreadyExists), a
 * point-in-time restore outside [earliest, LatestRestorableTime] (InvalidParameterValue — modelled:
 * RDS words this differently per engine), deleting a snapshot that is not available or is automated
 * (InvalidDBSnapshotState), storage changes under 10 % or while one is being optimised. Snapshots move
 * from `creating` to `available` after `snapshotDelayMs` (or when a test releases a hold); restored
 * instances from `creating` to `available` after `restoreDelayMs`.
 *
 * It also answers STS AssumeRoleWithWebIdentity (Version 2011-06-15, unsigned, as IRSA's web-identity
 * credential provider calls it) for a configured token, handing out temporary credentials that RDS
 * requests may then be signed with.
 */
import { createHash, createHmac, randomUUID } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

export const RDS_NS = 'http://rds.amazonaws.com/doc/2014-10-31/';
export const ACCOUNT = '123456789012';

export interface StandinCredentials {
  accessKeyId: string;
  secretAccessKey: string;
  sessionToken?: string;
}

/** The test credentials every stand-in accepts (unless told otherwise). */
export const TEST_CREDENTIALS: StandinCredentials = { accessKeyId: 'AKIASTANDIN000000001', secretAccessKey: 'standin/secret/key/0123456789abcdefghijklmn' };

export interface InstanceState {
  id: string;
  status: string;
  instanceClass: string;
  engine: string;
  engineVersion: string;
  allocatedGiB: number;
  maxAllocatedGiB?: number;
  pendingAllocatedGiB?: number;
  storageType: string;
  multiAZ: boolean;
  subnetGroup: string;
  securityGroupIds: string[];
  parameterGroup: string;
  backupRetentionDays: number;
  createdAt: Date;
  /** The oldest point a PITR may use (DescribeDBInstanceAutomatedBackups' RestoreWindow.EarliestTime). */
  earliestRestorableTime: Date;
  /** How far LatestRestorableTime lags behind now (RDS: about five minutes). */
  restoreLagMs: number;
  tags: Record<string, string>;
  restoredFrom?: { snapshot?: string; source?: string; time?: string };
}

export interface SnapshotState {
  id: string;
  instance: string;
  type: 'manual' | 'automated';
  status: string;
  createdAt: Date;
  allocatedGiB: number;
  percent: number;
  tags: Record<string, string>;
  engineVersion: string;
}

export interface RecordedRdsRequest {
  action: string;
  params: Record<string, string>;
  status: number;
  code?: string;
  accessKeyId?: string;
  sessionToken?: string;
  authorization?: string;
  at: number;
}

export interface RdsStandinOptions {
  region?: string;
  credentials?: StandinCredentials[];
  /** How long a snapshot stays `creating` (default 150 ms). */
  snapshotDelayMs?: number;
  restoreDelayMs?: number;
  /** How long a storage change stays `modifying`, then `storage-optimization` (default 100 ms each). */
  modifyDelayMs?: number;
  /** The account's manual snapshot quota in the region (RDS's default: 100). */
  manualSnapshotQuota?: number;
  /** STS AssumeRoleWithWebIdentity: the token it accepts and the role it is for. */
  webIdentity?: { token: string; roleArn: string };
}

interface Fault {
  action: string;
  code: string;
  status: number;
  message: string;
  count: number;
}

class RdsFault extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly type: 'Sender' | 'Receiver' = 'Sender',
  ) {
    super(message);
  }
}

const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
const el = (name: string, v: string | number | boolean | null | undefined) => (v === undefined || v === null ? '' : `<${name}>${esc(String(v))}</${name}>`);
const iso = (d: Date) => d.toISOString().replace(/\.\d{3}Z$/, '.000Z');

/** RDS's message for an identifier that breaks its rules (the same for every identifier parameter). */
function identifierError(param: string, value: string | undefined, max: number): RdsFault | null {
  if (value === undefined || value === '') return new RdsFault(400, 'MissingParameter', `The request must contain the parameter ${param}`);
  const ok = value.length <= max && /^[A-Za-z]/.test(value) && /^[A-Za-z0-9-]+$/.test(value) && !value.includes('--') && !value.endsWith('-');
  return ok
    ? null
    : new RdsFault(
        400,
        'InvalidParameterValue',
        `The parameter ${param} is not a valid identifier. Identifiers must begin with a letter; must contain only ASCII letters, digits, and hyphens; and must not end with a hyphen or contain two consecutive hyphens.`,
      );
}

export class RdsStandin {
  readonly region: string;
  readonly instances = new Map<string, InstanceState>();
  readonly snapshots = new Map<string, SnapshotState>();
  readonly requests: RecordedRdsRequest[] = [];
  private server: Server | null = null;
  private readonly credentials: StandinCredentials[];
  private faults: Fault[] = [];
  private denied = new Set<string>();
  private holds = 0;
  private readonly held: SnapshotState[] = [];
  private readonly timers = new Set<NodeJS.Timeout>();
  private nextOutcome: ('available' | 'failed')[] = [];
  snapshotDelayMs: number;
  restoreDelayMs: number;
  modifyDelayMs: number;
  manualSnapshotQuota: number;
  url = '';

  constructor(private readonly options: RdsStandinOptions = {}) {
    this.region = options.region ?? 'eu-west-2';
    this.credentials = [...(options.credentials ?? [TEST_CREDENTIALS])];
    this.snapshotDelayMs = options.snapshotDelayMs ?? 150;
    this.restoreDelayMs = options.restoreDelayMs ?? 150;
    this.modifyDelayMs = options.modifyDelayMs ?? 100;
    this.manualSnapshotQuota = options.manualSnapshotQuota ?? 100;
  }

  async start(): Promise<string> {
    this.server = createServer((req, res) => void this.handle(req, res));
    await new Promise<void>((r) => this.server!.listen(0, '127.0.0.1', r));
    this.url = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
    return this.url;
  }

  async close(): Promise<void> {
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
    await new Promise<void>((r) => (this.server ? this.server.close(() => r()) : r()));
    this.server?.closeAllConnections();
  }

  // ---- seeding and scripting ----

  seedInstance(i: Partial<InstanceState> & { id: string }): InstanceState {
    const now = Date.now();
    const inst: InstanceState = {
      status: 'available',
      instanceClass: 'db.r6g.large',
      engine: 'postgres',
      engineVersion: '15.5',
      allocatedGiB: 100,
      storageType: 'gp3',
      multiAZ: true,
      subnetGroup: 'lomash-wood-db',
      securityGroupIds: ['sg-0a1b2c3d4e5f60718'],
      parameterGroup: 'lomash-wood-postgres15',
      backupRetentionDays: 7,
      createdAt: new Date(now - 30 * 86_400_000),
      earliestRestorableTime: new Date(now - 7 * 86_400_000),
      restoreLagMs: 5 * 60_000,
      tags: {},
      ...i,
    };
    inst.id = inst.id.toLowerCase();
    this.instances.set(inst.id, inst);
    return inst;
  }

  seedSnapshot(s: Partial<SnapshotState> & { id: string; instance: string }): SnapshotState {
    const snap: SnapshotState = { type: 'manual', status: 'available', createdAt: new Date(), allocatedGiB: 100, percent: 100, tags: {}, engineVersion: '15.5', ...s };
    snap.id = snap.id.toLowerCase();
    this.snapshots.set(snap.id, snap);
    return snap;
  }

  /** The next `count` calls of `action` answer this AWS error (e.g. Throttling 400, InternalFailure 500). */
  failNext(action: string, code: string, opts: { count?: number; status?: number; message?: string } = {}): void {
    this.faults.push({ action, code, status: opts.status ?? 400, message: opts.message ?? (code === 'Throttling' ? 'Rate exceeded' : `${code} (scripted)`), count: opts.count ?? 1 });
  }

  /** Every call of `action` is denied by IAM (403 AccessDenied, AWS's wording) until allow(). */
  deny(action: string): void {
    this.denied.add(action);
  }

  allow(action: string): void {
    this.denied.delete(action);
  }

  /** The next snapshot(s) end in this status instead of available. */
  nextSnapshotEnds(status: 'available' | 'failed'): void {
    this.nextOutcome.push(status);
  }

  /** Snapshots started while held stay `creating` until the returned release() is called. */
  hold(): () => void {
    this.holds += 1;
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.holds -= 1;
      if (this.holds === 0) for (const s of this.held.splice(0)) this.finishSnapshot(s);
    };
  }

  /** Adds credentials the stand-in accepts (e.g. after STS handed them out). */
  acceptCredentials(c: StandinCredentials): void {
    this.credentials.push(c);
  }

  /** RDS requests by action (answered, whatever the status). */
  calls(action: string): RecordedRdsRequest[] {
    return this.requests.filter((r) => r.action === action);
  }

  private later(ms: number, fn: () => void): void {
    const t = setTimeout(() => {
      this.timers.delete(t);
      fn();
    }, ms);
    this.timers.add(t);
  }

  private finishSnapshot(s: SnapshotState): void {
    const outcome = this.nextOutcome.shift() ?? 'available';
    if (!this.snapshots.has(s.id)) return;
    s.status = outcome;
    s.percent = outcome === 'available' ? 100 : s.percent;
    const inst = this.instances.get(s.instance);
    if (inst && inst.status === 'backing-up') inst.status = 'available';
  }

  // ---- HTTP ----

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    const body = Buffer.concat(chunks).toString('utf8');
    const requestId = randomUUID();
    const params: Record<string, string> = {};
    for (const [k, v] of new URLSearchParams(body)) params[k] = v;
    const action = params.Action ?? '';
    const rec: RecordedRdsRequest = { action, params, status: 200, at: Date.now() };
    const send = (status: number, xml: string) => {
      rec.status = status;
      this.requests.push(rec);
      res.writeHead(status, { 'content-type': 'text/xml', 'x-amzn-requestid': requestId });
      res.end(xml);
    };
    try {
      if (req.method !== 'POST' || (req.url ?? '/').split('?')[0] !== '/') throw new RdsFault(400, 'InvalidAction', 'The action or operation requested is invalid. Verify that the action is typed correctly.');
      if (!/^application\/x-www-form-urlencoded/.test(req.headers['content-type'] ?? '')) throw new RdsFault(400, 'InvalidParameterValue', 'Content-Type must be application/x-www-form-urlencoded');
      if (action === 'AssumeRoleWithWebIdentity') {
        send(200, this.assumeRoleWithWebIdentity(params, requestId));
        return;
      }
      const who = this.authenticate(req, body);
      rec.accessKeyId = who.accessKeyId;
      if (who.sessionToken) rec.sessionToken = who.sessionToken;
      rec.authorization = String(req.headers.authorization);
      if (!action) throw new RdsFault(400, 'MissingAction', 'The request must contain the parameter Action.');
      if (params.Version !== '2014-10-31') throw new RdsFault(400, 'InvalidParameterValue', `Unsupported Version ${params.Version ?? '(none)'}: this endpoint is RDS 2014-10-31`);
      const fault = this.faults.find((f) => f.action === action && f.count > 0);
      if (fault) {
        fault.count -= 1;
        throw new RdsFault(fault.status, fault.code, fault.message, fault.status >= 500 ? 'Receiver' : 'Sender');
      }
      if (this.denied.has(action)) {
        throw new RdsFault(
          403,
          'AccessDenied',
          `User: arn:aws:sts::${ACCOUNT}:assumed-role/dbpilot/standin is not authorized to perform: rds:${action} on resource: arn:aws:rds:${this.region}:${ACCOUNT}:db:${params.DBInstanceIdentifier ?? params.SourceDBInstanceIdentifier ?? '*'} because no identity-based policy allows the rds:${action} action`,
        );
      }
      const result = this.dispatch(action, params);
      send(200, `<${action}Response xmlns="${RDS_NS}"><${action}Result>${result}</${action}Result><ResponseMetadata><RequestId>${requestId}</RequestId></ResponseMetadata></${action}Response>`);
    } catch (err) {
      const f = err instanceof RdsFault ? err : new RdsFault(500, 'InternalFailure', `stand-in error: ${(err as Error).message}`, 'Receiver');
      rec.code = f.code;
      send(f.status, `<ErrorResponse xmlns="${RDS_NS}"><Error><Type>${f.type}</Type><Code>${f.code}</Code><Message>${esc(f.message)}</Message></Error><RequestId>${requestId}</RequestId></ErrorResponse>`);
    }
  }

  /** SigV4, checked as AWS does: a well-formed header, a known key, the right scope, and the signature itself. */
  private authenticate(req: IncomingMessage, body: string): StandinCredentials {
    const auth = req.headers.authorization;
    if (!auth) throw new RdsFault(403, 'MissingAuthenticationToken', 'Request is missing Authentication Token');
    const m = /^AWS4-HMAC-SHA256 Credential=([^/,\s]+)\/(\d{8})\/([a-z0-9-]+)\/([a-z0-9-]+)\/aws4_request, ?SignedHeaders=([a-z0-9;-]+), ?Signature=([0-9a-f]{64})$/.exec(String(auth));
    if (!m) throw new RdsFault(400, 'IncompleteSignature', `Authorization header requires 'Credential', 'SignedHeaders' and 'Signature' parameters: ${String(auth).split(' ')[0]}`);
    const [, keyId, date, region, service, signedHeaders, signature] = m as unknown as string[];
    const amzDate = String(req.headers['x-amz-date'] ?? '');
    if (!/^\d{8}T\d{6}Z$/.test(amzDate) || amzDate.slice(0, 8) !== date) throw new RdsFault(400, 'IncompleteSignature', 'X-Amz-Date is missing or does not match the credential scope date');
    const signed = signedHeaders!.split(';');
    if (!signed.includes('host') || !signed.includes('x-amz-date')) throw new RdsFault(400, 'IncompleteSignature', 'SignedHeaders must include host and x-amz-date');
    const cred = this.credentials.find((c) => c.accessKeyId === keyId);
    if (!cred) throw new RdsFault(403, 'InvalidClientTokenId', 'The security token included in the request is invalid.');
    if (region !== this.region) throw new RdsFault(403, 'SignatureDoesNotMatch', `Credential should be scoped to a valid region, not '${region}'.`);
    if (service !== 'rds') throw new RdsFault(403, 'SignatureDoesNotMatch', `Credential should be scoped to correct service: 'rds'.`);
    const token = req.headers['x-amz-security-token'];
    if ((cred.sessionToken ?? undefined) !== (token === undefined ? undefined : String(token))) throw new RdsFault(403, 'InvalidClientTokenId', 'The security token included in the request is invalid.');
    if (cred.sessionToken && !signed.includes('x-amz-security-token')) throw new RdsFault(403, 'SignatureDoesNotMatch', 'x-amz-security-token must be signed');
    const t = Date.UTC(+amzDate.slice(0, 4), +amzDate.slice(4, 6) - 1, +amzDate.slice(6, 8), +amzDate.slice(9, 11), +amzDate.slice(11, 13), +amzDate.slice(13, 15));
    if (Math.abs(Date.now() - t) > 15 * 60_000) throw new RdsFault(403, 'SignatureDoesNotMatch', 'Signature expired: the request time is more than 15 minutes from the server time');
    const payloadHash = createHash('sha256').update(body).digest('hex');
    const claimed = req.headers['x-amz-content-sha256'];
    if (claimed !== undefined && claimed !== payloadHash) throw new RdsFault(400, 'XAmzContentSHA256Mismatch', 'The provided x-amz-content-sha256 header does not match what was computed.');
    const canonicalHeaders = signed.map((h) => `${h}:${String(req.headers[h] ?? '').trim().replace(/\s+/g, ' ')}\n`).join('');
    const canonical = ['POST', '/', '', canonicalHeaders, signedHeaders, payloadHash].join('\n');
    const scope = `${date}/${region}/${service}/aws4_request`;
    const toSign = ['AWS4-HMAC-SHA256', amzDate, scope, createHash('sha256').update(canonical).digest('hex')].join('\n');
    const hmac = (k: Buffer | string, v: string) => createHmac('sha256', k).update(v).digest();
    const key = hmac(hmac(hmac(hmac(`AWS4${cred.secretAccessKey}`, date!), region!), service!), 'aws4_request');
    const expected = createHmac('sha256', key).update(toSign).digest('hex');
    if (expected !== signature) throw new RdsFault(403, 'SignatureDoesNotMatch', 'The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method.');
    return cred;
  }

  private assumeRoleWithWebIdentity(p: Record<string, string>, requestId: string): string {
    const wi = this.options.webIdentity;
    if (p.Version !== '2011-06-15') throw new RdsFault(400, 'InvalidAction', 'Could not find operation AssumeRoleWithWebIdentity for version ' + (p.Version ?? ''));
    if (!wi || p.WebIdentityToken !== wi.token) throw new RdsFault(400, 'InvalidIdentityToken', 'Couldn\'t retrieve verification key from your identity provider');
    if (p.RoleArn !== wi.roleArn) throw new RdsFault(403, 'AccessDenied', 'Not authorized to perform sts:AssumeRoleWithWebIdentity');
    const c: StandinCredentials = { accessKeyId: `ASIA${randomUUID().replace(/-/g, '').slice(0, 16).toUpperCase()}`, secretAccessKey: randomUUID() + randomUUID(), sessionToken: `IQoJb3JpZ2luX2Vj${randomUUID().replace(/-/g, '')}` };
    this.acceptCredentials(c);
    this.requests.push({ action: 'AssumeRoleWithWebIdentity', params: { RoleArn: p.RoleArn ?? '', RoleSessionName: p.RoleSessionName ?? '' }, status: 200, at: Date.now() });
    const exp = new Date(Date.now() + 3600_000).toISOString();
    return `<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><AssumeRoleWithWebIdentityResult>${el('SubjectFromWebIdentityToken', 'system:serviceaccount:lomash-wood:dbpilot')}<AssumedRoleUser>${el('Arn', `arn:aws:sts::${ACCOUNT}:assumed-role/dbpilot/${p.RoleSessionName ?? 's'}`)}${el('AssumedRoleId', `AROASTANDIN:${p.RoleSessionName ?? 's'}`)}</AssumedRoleUser><Credentials>${el('AccessKeyId', c.accessKeyId)}${el('SecretAccessKey', c.secretAccessKey)}${el('SessionToken', c.sessionToken)}${el('Expiration', exp)}</Credentials>${el('Audience', 'sts.amazonaws.com')}${el('Provider', `arn:aws:iam::${ACCOUNT}:oidc-provider/oidc.eks.${this.region}.amazonaws.com/id/STANDIN`)}</AssumeRoleWithWebIdentityResult><ResponseMetadata><RequestId>${requestId}</RequestId></ResponseMetadata></AssumeRoleWithWebIdentityResponse>`;
  }

  // ---- actions ----

  private dispatch(action: string, p: Record<string, string>): string {
    switch (action) {
      case 'CreateDBSnapshot':
        return this.createDBSnapshot(p);
      case 'DescribeDBSnapshots':
        return this.describeDBSnapshots(p);
      case 'DeleteDBSnapshot':
        return this.deleteDBSnapshot(p);
      case 'DescribeDBInstances':
        return this.describeDBInstances(p);
      case 'DescribeDBInstanceAutomatedBackups':
        return this.describeAutomatedBackups(p);
      case 'RestoreDBInstanceFromDBSnapshot':
        return this.restoreFromSnapshot(p);
      case 'RestoreDBInstanceToPointInTime':
        return this.restoreToPointInTime(p);
      case 'ModifyDBInstance':
        return this.modifyDBInstance(p);
      default:
        throw new RdsFault(400, 'InvalidAction', `The action ${action} is not valid for this web service (or not modelled by the stand-in).`);
    }
  }

  private instanceOr404(id: string | undefined): InstanceState {
    const inst = id ? this.instances.get(id.toLowerCase()) : undefined;
    if (!inst) throw new RdsFault(404, 'DBInstanceNotFound', `DBInstance ${id ?? ''} not found.`);
    return inst;
  }

  private tagsOf(p: Record<string, string>): Record<string, string> {
    const tags: Record<string, string> = {};
    for (let n = 1; p[`Tags.Tag.${n}.Key`] !== undefined; n++) {
      const k = p[`Tags.Tag.${n}.Key`]!;
      const v = p[`Tags.Tag.${n}.Value`] ?? '';
      if (k.length < 1 || k.length > 128 || v.length > 256 || !/^[\p{L}\p{Z}\p{N}_.:/=+\-@]*$/u.test(k) || !/^[\p{L}\p{Z}\p{N}_.:/=+\-@]*$/u.test(v)) {
        throw new RdsFault(400, 'InvalidParameterValue', `Invalid tag: key ${JSON.stringify(k)} / value ${JSON.stringify(v)}`);
      }
      if (/^aws:/i.test(k)) throw new RdsFault(400, 'InvalidParameterValue', 'Tag keys may not start with aws:');
      tags[k] = v;
    }
    if (Object.keys(tags).length > 50) throw new RdsFault(400, 'TagQuotaPerResourceExceeded', 'A resource may have at most 50 tags');
    return tags;
  }

  private createDBSnapshot(p: Record<string, string>): string {
    const bad = identifierError('DBSnapshotIdentifier', p.DBSnapshotIdentifier, 255);
    if (bad) throw bad;
    const inst = this.instanceOr404(p.DBInstanceIdentifier);
    const id = p.DBSnapshotIdentifier!.toLowerCase();
    if (this.snapshots.has(id)) throw new RdsFault(400, 'DBSnapshotAlreadyExists', `Cannot create the snapshot because a snapshot with the identifier ${id} already exists.`);
    const manual = [...this.snapshots.values()].filter((s) => s.type === 'manual').length;
    if (manual >= this.manualSnapshotQuota) throw new RdsFault(400, 'SnapshotQuotaExceeded', `Cannot create more than ${this.manualSnapshotQuota} manual snapshots`);
    if (inst.status !== 'available') throw new RdsFault(400, 'InvalidDBInstanceState', `Cannot create a snapshot because the database instance ${inst.id} is not currently in the available state.`);
    const tags = this.tagsOf(p);
    const snap = this.seedSnapshot({ id, instance: inst.id, type: 'manual', status: 'creating', percent: 0, createdAt: new Date(), allocatedGiB: inst.allocatedGiB, tags, engineVersion: inst.engineVersion });
    inst.status = 'backing-up';
    if (this.holds > 0) this.held.push(snap);
    else this.later(this.snapshotDelayMs, () => this.finishSnapshot(snap));
    return this.snapshotXml(snap);
  }

  private describeDBSnapshots(p: Record<string, string>): string {
    const max = p.MaxRecords === undefined ? 100 : Number(p.MaxRecords);
    if (!Number.isInteger(max) || max < 20 || max > 100) throw new RdsFault(400, 'InvalidParameterValue', 'Invalid value for MaxRecords. Must be between 20 and 100');
    if (p.SnapshotType !== undefined && !['automated', 'manual', 'shared', 'public', 'awsbackup'].includes(p.SnapshotType)) throw new RdsFault(400, 'InvalidParameterValue', `Invalid snapshot type: ${p.SnapshotType}`);
    if (p.DBSnapshotIdentifier !== undefined) {
      const s = this.snapshots.get(p.DBSnapshotIdentifier.toLowerCase());
      if (!s) throw new RdsFault(404, 'DBSnapshotNotFound', `DBSnapshot ${p.DBSnapshotIdentifier} not found.`);
      return `<DBSnapshots>${this.snapshotXml(s)}</DBSnapshots>`;
    }
    if (p.DBInstanceIdentifier !== undefined && !this.instances.has(p.DBInstanceIdentifier.toLowerCase()) && ![...this.snapshots.values()].some((s) => s.instance === p.DBInstanceIdentifier!.toLowerCase())) {
      throw new RdsFault(404, 'DBInstanceNotFound', `DBInstance ${p.DBInstanceIdentifier} not found.`);
    }
    const all = [...this.snapshots.values()]
      .filter((s) => (p.DBInstanceIdentifier === undefined || s.instance === p.DBInstanceIdentifier.toLowerCase()) && (p.SnapshotType === undefined || s.type === p.SnapshotType))
      .sort((a, b) => a.id.localeCompare(b.id));
    const start = p.Marker ? Number(Buffer.from(p.Marker, 'base64').toString()) : 0;
    const page = all.slice(start, start + max);
    const marker = start + max < all.length ? Buffer.from(String(start + max)).toString('base64') : undefined;
    return `${marker ? el('Marker', marker) : ''}<DBSnapshots>${page.map((s) => this.snapshotXml(s)).join('')}</DBSnapshots>`;
  }

  private deleteDBSnapshot(p: Record<string, string>): string {
    const s = p.DBSnapshotIdentifier ? this.snapshots.get(p.DBSnapshotIdentifier.toLowerCase()) : undefined;
    if (!s) throw new RdsFault(404, 'DBSnapshotNotFound', `DBSnapshot ${p.DBSnapshotIdentifier ?? ''} not found.`);
    if (s.type !== 'manual') throw new RdsFault(400, 'InvalidDBSnapshotState', 'Only manual snapshots may be deleted.');
    if (s.status !== 'available') throw new RdsFault(400, 'InvalidDBSnapshotState', `Cannot delete the snapshot because it is not in the available state (it is ${s.status}).`);
    this.snapshots.delete(s.id);
    return this.snapshotXml({ ...s, status: 'deleted' });
  }

  private describeDBInstances(p: Record<string, string>): string {
    const list = p.DBInstanceIdentifier !== undefined ? [this.instanceOr404(p.DBInstanceIdentifier)] : [...this.instances.values()];
    return `<DBInstances>${list.map((i) => this.instanceXml(i)).join('')}</DBInstances>`;
  }

  private describeAutomatedBackups(p: Record<string, string>): string {
    const list = p.DBInstanceIdentifier !== undefined ? [this.instanceOr404(p.DBInstanceIdentifier)] : [...this.instances.values()];
    const rows = list
      .filter((i) => i.backupRetentionDays > 0)
      .map(
        (i) =>
          `<DBInstanceAutomatedBackup>${el('DBInstanceArn', this.arn('db', i.id))}${el('DbiResourceId', `db-${i.id.toUpperCase().replace(/-/g, '')}`)}${el('Region', this.region)}${el('DBInstanceIdentifier', i.id)}<RestoreWindow>${el('EarliestTime', iso(i.earliestRestorableTime))}${el('LatestTime', iso(this.latestRestorable(i)))}</RestoreWindow>${el('AllocatedStorage', i.allocatedGiB)}${el('Status', 'active')}${el('Engine', i.engine)}${el('EngineVersion', i.engineVersion)}${el('BackupRetentionPeriod', i.backupRetentionDays)}</DBInstanceAutomatedBackup>`,
      );
    return `<DBInstanceAutomatedBackups>${rows.join('')}</DBInstanceAutomatedBackups>`;
  }

  private latestRestorable(i: InstanceState): Date {
    return new Date(Date.now() - i.restoreLagMs);
  }

  private newInstanceFrom(p: Record<string, string>, target: string, from: { allocatedGiB: number; engineVersion: string; base?: InstanceState }): InstanceState {
    const sgs: string[] = [];
    for (let n = 1; p[`VpcSecurityGroupIds.VpcSecurityGroupId.${n}`] !== undefined; n++) sgs.push(p[`VpcSecurityGroupIds.VpcSecurityGroupId.${n}`]!);
    const now = Date.now();
    // Like RDS: what is not given comes from the snapshot/source, except the network (default VPC) and parameter group (default).
    const inst = this.seedInstance({
      id: target,
      status: 'creating',
      instanceClass: p.DBInstanceClass ?? from.base?.instanceClass ?? 'db.t3.micro',
      engineVersion: from.engineVersion,
      allocatedGiB: from.allocatedGiB,
      multiAZ: p.MultiAZ === undefined ? false : p.MultiAZ === 'true',
      subnetGroup: p.DBSubnetGroupName ?? 'default',
      securityGroupIds: sgs.length ? sgs : ['sg-default'],
      parameterGroup: p.DBParameterGroupName ?? 'default.postgres15',
      createdAt: new Date(now),
      earliestRestorableTime: new Date(now),
      tags: this.tagsOf(p),
    });
    this.later(this.restoreDelayMs, () => {
      if (inst.status === 'creating') inst.status = 'available';
    });
    return inst;
  }

  private restoreFromSnapshot(p: Record<string, string>): string {
    const bad = identifierError('DBInstanceIdentifier', p.DBInstanceIdentifier, 63);
    if (bad) throw bad;
    const target = p.DBInstanceIdentifier!.toLowerCase();
    if (this.instances.has(target)) throw new RdsFault(400, 'DBInstanceAlreadyExists', 'DB instance already exists');
    const s = p.DBSnapshotIdentifier ? this.snapshots.get(p.DBSnapshotIdentifier.toLowerCase()) : undefined;
    if (!s) throw new RdsFault(404, 'DBSnapshotNotFound', `DBSnapshot ${p.DBSnapshotIdentifier ?? ''} not found.`);
    if (s.status !== 'available') throw new RdsFault(400, 'InvalidDBSnapshotState', `Snapshot ${s.id} is not available (it is ${s.status}).`);
    const inst = this.newInstanceFrom(p, target, { allocatedGiB: s.allocatedGiB, engineVersion: s.engineVersion, ...(this.instances.get(s.instance) ? { base: this.instances.get(s.instance)! } : {}) });
    inst.restoredFrom = { snapshot: s.id };
    return this.instanceXml(inst);
  }

  private restoreToPointInTime(p: Record<string, string>): string {
    const bad = identifierError('TargetDBInstanceIdentifier', p.TargetDBInstanceIdentifier, 63);
    if (bad) throw bad;
    const src = this.instanceOr404(p.SourceDBInstanceIdentifier);
    const target = p.TargetDBInstanceIdentifier!.toLowerCase();
    if (this.instances.has(target)) throw new RdsFault(400, 'DBInstanceAlreadyExists', 'DB instance already exists');
    if (src.backupRetentionDays === 0) throw new RdsFault(400, 'PointInTimeRestoreNotEnabled', `Point-in-time restore is not enabled for ${src.id}: its backup retention period is 0.`);
    const latest = p.UseLatestRestorableTime === 'true';
    if (latest && p.RestoreTime !== undefined) throw new RdsFault(400, 'InvalidParameterCombination', 'Cannot specify both RestoreTime and UseLatestRestorableTime.');
    if (!latest && p.RestoreTime === undefined) throw new RdsFault(400, 'InvalidParameterCombination', 'Either RestoreTime or UseLatestRestorableTime must be specified.');
    let when = this.latestRestorable(src);
    if (!latest) {
      when = new Date(p.RestoreTime!);
      if (Number.isNaN(when.getTime())) throw new RdsFault(400, 'InvalidParameterValue', `Invalid RestoreTime: ${p.RestoreTime}`);
      const lr = this.latestRestorable(src);
      if (when < src.earliestRestorableTime || when > lr) {
        throw new RdsFault(400, 'InvalidParameterValue', `The restore time ${iso(when)} is outside the restorable window ${iso(src.earliestRestorableTime)} to ${iso(lr)} for ${src.id}.`);
      }
    }
    const inst = this.newInstanceFrom(p, target, { allocatedGiB: src.allocatedGiB, engineVersion: src.engineVersion, base: src });
    inst.restoredFrom = { source: src.id, time: iso(when) };
    return this.instanceXml(inst);
  }

  private modifyDBInstance(p: Record<string, string>): string {
    const inst = this.instanceOr404(p.DBInstanceIdentifier);
    const known = new Set(['Action', 'Version', 'DBInstanceIdentifier', 'AllocatedStorage', 'ApplyImmediately']);
    const other = Object.keys(p).filter((k) => !known.has(k));
    if (other.length) throw new RdsFault(400, 'InvalidParameterCombination', `the stand-in models only AllocatedStorage changes (got ${other.join(', ')})`);
    if (p.AllocatedStorage === undefined) return this.instanceXml(inst);
    const to = Number(p.AllocatedStorage);
    if (inst.status === 'storage-optimization' || inst.pendingAllocatedGiB !== undefined) {
      throw new RdsFault(400, 'InvalidParameterCombination', "You can't currently modify the storage of this DB instance because the previous storage change is being optimized.");
    }
    if (inst.status !== 'available' && inst.status !== 'backing-up') throw new RdsFault(400, 'InvalidDBInstanceState', 'Database instance is not in available state.');
    if (!Number.isInteger(to) || to < Math.ceil((inst.allocatedGiB * 11) / 10) || to > 65_536) {
      throw new RdsFault(400, 'InvalidParameterCombination', `Invalid storage size for engine name ${inst.engine} and storage type ${inst.storageType}: ${p.AllocatedStorage}`);
    }
    if (inst.maxAllocatedGiB !== undefined && to > inst.maxAllocatedGiB) throw new RdsFault(400, 'InvalidParameterCombination', 'Max allocated storage must be greater than allocated storage.');
    inst.pendingAllocatedGiB = to;
    inst.status = 'modifying';
    const xml = this.instanceXml(inst);
    this.later(this.modifyDelayMs, () => {
      inst.allocatedGiB = to;
      delete inst.pendingAllocatedGiB;
      inst.status = 'storage-optimization';
      this.later(this.modifyDelayMs, () => {
        if (inst.status === 'storage-optimization') inst.status = 'available';
      });
    });
    return xml;
  }

  // ---- XML in RDS's shapes ----

  private arn(kind: string, id: string): string {
    return `arn:aws:rds:${this.region}:${ACCOUNT}:${kind}:${id}`;
  }

  private tagListXml(tags: Record<string, string>): string {
    return `<TagList>${Object.entries(tags)
      .map(([k, v]) => `<Tag>${el('Key', k)}${el('Value', v)}</Tag>`)
      .join('')}</TagList>`;
  }

  snapshotXml(s: SnapshotState): string {
    const inst = this.instances.get(s.instance);
    return `<DBSnapshot>${el('DBSnapshotIdentifier', s.id)}${el('DBInstanceIdentifier', s.instance)}${s.status === 'creating' && s.percent === 0 ? '' : el('SnapshotCreateTime', iso(s.createdAt))}${el('Engine', 'postgres')}${el('AllocatedStorage', s.allocatedGiB)}${el('Status', s.status)}${el('Port', 5432)}${el('AvailabilityZone', `${this.region}a`)}${el('VpcId', 'vpc-0standin')}${el('InstanceCreateTime', iso(inst?.createdAt ?? s.createdAt))}${el('MasterUsername', 'postgres')}${el('EngineVersion', s.engineVersion)}${el('LicenseModel', 'postgresql-license')}${el('SnapshotType', s.type)}${el('PercentProgress', s.percent)}${el('StorageType', inst?.storageType ?? 'gp3')}${el('Encrypted', true)}${el('KmsKeyId', `arn:aws:kms:${this.region}:${ACCOUNT}:key/standin`)}${el('DBSnapshotArn', this.arn('snapshot', s.id))}${el('IAMDatabaseAuthenticationEnabled', false)}<ProcessorFeatures/>${el('DbiResourceId', `db-${s.instance.toUpperCase().replace(/-/g, '')}`)}${this.tagListXml(s.tags)}${el('OriginalSnapshotCreateTime', iso(s.createdAt))}${el('SnapshotTarget', 'region')}${el('DedicatedLogVolume', false)}${el('MultiTenant', false)}</DBSnapshot>`;
  }

  instanceXml(i: InstanceState): string {
    const pending = i.pendingAllocatedGiB !== undefined ? `<PendingModifiedValues>${el('AllocatedStorage', i.pendingAllocatedGiB)}</PendingModifiedValues>` : '<PendingModifiedValues/>';
    const endpoint = i.status === 'creating' ? '' : `<Endpoint>${el('Address', `${i.id}.cstandin.${this.region}.rds.amazonaws.com`)}${el('Port', 5432)}${el('HostedZoneId', 'Z1TTGA775OQIYO')}</Endpoint>`;
    return `<DBInstance>${el('DBInstanceIdentifier', i.id)}${el('DBInstanceClass', i.instanceClass)}${el('Engine', i.engine)}${el('DBInstanceStatus', i.status)}${el('MasterUsername', 'postgres')}${endpoint}${el('AllocatedStorage', i.allocatedGiB)}${el('InstanceCreateTime', iso(i.createdAt))}${el('PreferredBackupWindow', '02:00-02:30')}${el('BackupRetentionPeriod', i.backupRetentionDays)}<DBSecurityGroups/><VpcSecurityGroups>${i.securityGroupIds.map((g) => `<VpcSecurityGroupMembership>${el('VpcSecurityGroupId', g)}${el('Status', 'active')}</VpcSecurityGroupMembership>`).join('')}</VpcSecurityGroups><DBParameterGroups><DBParameterGroup>${el('DBParameterGroupName', i.parameterGroup)}${el('ParameterApplyStatus', 'in-sync')}</DBParameterGroup></DBParameterGroups>${el('AvailabilityZone', `${this.region}a`)}<DBSubnetGroup>${el('DBSubnetGroupName', i.subnetGroup)}${el('DBSubnetGroupDescription', i.subnetGroup)}${el('VpcId', 'vpc-0standin')}${el('SubnetGroupStatus', 'Complete')}<Subnets/></DBSubnetGroup>${el('PreferredMaintenanceWindow', 'sun:04:00-sun:04:30')}${pending}${i.backupRetentionDays > 0 && i.status !== 'creating' ? el('LatestRestorableTime', iso(this.latestRestorable(i))) : ''}${el('MultiAZ', i.multiAZ)}${el('EngineVersion', i.engineVersion)}${el('AutoMinorVersionUpgrade', true)}<ReadReplicaDBInstanceIdentifiers/>${el('LicenseModel', 'postgresql-license')}<OptionGroupMemberships><OptionGroupMembership>${el('OptionGroupName', 'default:postgres-15')}${el('Status', 'in-sync')}</OptionGroupMembership></OptionGroupMemberships>${el('PubliclyAccessible', false)}${el('StorageType', i.storageType)}${el('DbInstancePort', 0)}${el('StorageEncrypted', true)}${el('DbiResourceId', `db-${i.id.toUpperCase().replace(/-/g, '')}`)}${el('CACertificateIdentifier', 'rds-ca-rsa2048-g1')}${el('CopyTagsToSnapshot', false)}${el('DBInstanceArn', this.arn('db', i.id))}${el('IAMDatabaseAuthenticationEnabled', false)}${el('DeletionProtection', i.id.endsWith('-prod'))}${i.maxAllocatedGiB !== undefined ? el('MaxAllocatedStorage', i.maxAllocatedGiB) : ''}${this.tagListXml(i.tags)}</DBInstance>`;
  }
}

/** The `aws:` block of a configuration document that points dbpilot at this stand-in (fast polls for tests). */
export function awsConfigFor(standin: RdsStandin, over: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    region: standin.region,
    dbInstanceIdentifier: 'lomash-wood-prod',
    endpoint: standin.url,
    snapshotPollSeconds: 0.02,
    snapshotTimeoutMinutes: 1,
    maxAttempts: 3,
    requestTimeoutMs: 5000,
    ...over,
  };
}

/** The environment a child process needs to sign with the stand-in's test key through the SDK's default chain. */
export function standinEnv(c: StandinCredentials = TEST_CREDENTIALS): Record<string, string> {
  return {
    AWS_ACCESS_KEY_ID: c.accessKeyId,
    AWS_SECRET_ACCESS_KEY: c.secretAccessKey,
    ...(c.sessionToken ? { AWS_SESSION_TOKEN: c.sessionToken } : {}),
    // Never reach for instance metadata (169.254.169.254) from a test.
    AWS_EC2_METADATA_DISABLED: 'true',
    AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true',
  };
}
