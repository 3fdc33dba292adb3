/**
 * The deployment artefacts, checked without Docker, a cluster or helm (none is on the development
 * machines or in CI):
 * - Dockerfile: parsed; its stages, the non-root user, what reaches the final stage (no src/, so
 *   bin/dbpilot.js runs dist/), ENTRYPOINT/CMD, HEALTHCHECK, the Node version against package.json;
 *   and the final stage's file layout rebuilt in a temp dir (dist/ compiled fresh, bin/, package.json,
 *   node_modules, no src/) and run: `check-config` on the chart's configuration, and `serve` probed
 *   with the image's own HEALTHCHECK command.
 * - helm/dbpilot: rendered by test/deploy/gotemplate.ts for several value sets and parsed as YAML:
 *   labels, RBAC against the Kubernetes API calls in src/integrations/kubernetes.ts, pod security,
 *   the Lease identity, probes, and the rendered configuration through dbpilot's own loader with the
 *   environment the StatefulSet sets. When a `helm` binary is available (HELM_BIN or PATH) the same
 *   value sets are also rendered by `helm template` and compared.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse as parseYaml } from 'yaml';
import { loadConfig } from '../../src/config.js';
import { imageNodeFlags } from '../../bench/dbpilot-build.js';
import { freePort } from '../support/ports.js';
import { findHelm, helmTemplate, helmTemplateError, loadChart, renderChart, type Dict, type Manifest, type RenderOptions } from './helm.js';

/** Rendered Kubernetes objects, walked as plain JSON. */
type K8s = any;

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const CHART_DIR = path.join(ROOT, 'helm', 'dbpilot');
const read = (rel: string): string => readFileSync(path.join(ROOT, rel), 'utf8');
const pkg = JSON.parse(read('package.json')) as { version: string; engines: { node: string } };

// =============================================================================================
// Dockerfile

interface Instruction {
  keyword: string;
  /** Arguments after the flags, as written. */
  args: string;
  flags: Record<string, string>;
  line: number;
}

interface Stage {
  image: string;
  name: string | undefined;
  instructions: Instruction[];
}

/** Dockerfile syntax: parser directives, comments, `\` continuations (comment lines inside dropped), `--flag=value`. */
function parseDockerfile(text: string): { globalArgs: Record<string, string>; stages: Stage[] } {
  const lines = text.split('\n');
  const instructions: Instruction[] = [];
  let i = 0;
  while (i < lines.length) {
    const start = i;
    let line = lines[i++]!;
    if (/^\s*(#|$)/.test(line)) continue;
    while (/\\\s*$/.test(line) && i < lines.length) {
      line = line.replace(/\\\s*$/, '');
      const next = lines[i++]!;
      if (/^\s*#/.test(next) || next.trim() === '') continue;
      line += ` ${next.trim()}`;
    }
    const m = /^\s*([A-Za-z]+)\s*(.*)$/.exec(line);
    if (!m) throw new Error(`Dockerfile:${start + 1}: cannot parse ${line}`);
    let rest = m[2]!.trim();
    const flags: Record<string, string> = {};
    for (let f = /^--([a-z-]+)(?:=(\S*))?\s*/.exec(rest); f; f = /^--([a-z-]+)(?:=(\S*))?\s*/.exec(rest)) {
      flags[f[1]!] = f[2] ?? 'true';
      rest = rest.slice(f[0].length);
    }
    instructions.push({ keyword: m[1]!.toUpperCase(), args: rest, flags, line: start + 1 });
  }
  const globalArgs: Record<string, string> = {};
  const stages: Stage[] = [];
  for (const ins of instructions) {
    if (ins.keyword === 'FROM') {
      const [image, as, name] = ins.args.split(/\s+/);
      const resolved = image!.replace(/\$\{(\w+)\}|\$(\w+)/g, (_m, a?: string, b?: string) => globalArgs[(a ?? b)!] ?? '');
      stages.push({ image: resolved, name: as?.toUpperCase() === 'AS' ? name : undefined, instructions: [] });
    } else if (stages.length === 0) {
      if (ins.keyword !== 'ARG') throw new Error(`Dockerfile:${ins.line}: only ARG may precede FROM`);
      const [k, v] = ins.args.split('=');
      globalArgs[k!] = v ?? '';
    } else {
      stages[stages.length - 1]!.instructions.push(ins);
    }
  }
  return { globalArgs, stages };
}

/** Exec-form (JSON array) arguments, or throws: shell form would run under /bin/sh and lose signals. */
function execForm(ins: Instruction | undefined): string[] {
  if (!ins) throw new Error('instruction missing');
  const parsed: unknown = JSON.parse(ins.args);
  if (!Array.isArray(parsed) || !parsed.every((x) => typeof x === 'string')) throw new Error(`${ins.keyword} is not in exec form`);
  return parsed;
}

/** COPY/ADD sources (everything but the destination). */
function copySources(ins: Instruction): string[] {
  const parts = ins.args.startsWith('[') ? execForm(ins) : ins.args.split(/\s+/);
  return parts.slice(0, -1);
}

/** The lowest Node major an `engines.node` range like ">=20.11" allows. */
function minNodeMajor(range: string): number {
  const m = /^>=\s*(\d+)(?:\.\d+){0,2}$/.exec(range.trim());
  if (!m) throw new Error(`unsupported engines.node range ${range}`);
  return Number(m[1]);
}

const dockerfile = parseDockerfile(read('Dockerfile'));
const buildStage = dockerfile.stages[0]!;
const finalStage = dockerfile.stages[dockerfile.stages.length - 1]!;
const finalOf = (kw: string): Instruction[] => finalStage.instructions.filter((i) => i.keyword === kw);
const lastOf = (kw: string): Instruction | undefined => finalOf(kw).at(-1);
const envOf = (stage: Stage): Record<string, string> => {
  const env: Record<string, string> = {};
  for (const ins of stage.instructions.filter((i) => i.keyword === 'ENV')) {
    for (const m of ins.args.matchAll(/(\w+)=("[^"]*"|\S+)/g)) env[m[1]!] = m[2]!.replace(/^"|"$/g, '');
  }
  return env;
};

describe('Dockerfile', () => {
  it('has a build stage and a runtime stage on the same node:20-bookworm-slim base', () => {
    expect(dockerfile.stages).toHaveLength(2);
    expect(buildStage.name).toBe('build');
    for (const s of dockerfile.stages) expect(s.image).toBe('node:20-bookworm-slim');
  });

  it('uses the Node major that package.json engines asks for', () => {
    for (const s of dockerfile.stages) {
      const major = Number(/^node:(\d+)(?:[.-]|$)/.exec(s.image)?.[1]);
      expect(major).toBe(minNodeMajor(pkg.engines.node));
    }
  });

  it('builds: toolchain for better-sqlite3, npm ci, npm run build, then prunes the dev dependencies', () => {
    const runs = buildStage.instructions.filter((i) => i.keyword === 'RUN').map((i) => i.args);
    const at = (re: RegExp): number => runs.findIndex((r) => re.test(r));
    const toolchain = runs[at(/apt-get install/)] ?? '';
    for (const p of ['python3', 'make', 'g++']) expect(toolchain.split(/\s+/)).toContain(p);
    expect(at(/\bnpm ci\b/)).toBeGreaterThan(at(/apt-get install/));
    expect(at(/\bnpm run build\b/)).toBeGreaterThan(at(/\bnpm ci\b/));
    expect(at(/\bnpm prune --omit=dev\b/)).toBeGreaterThanOrEqual(at(/\bnpm run build\b/));
    // npm ci installs exactly the lock file: it must be in the build context before it runs.
    const firstCopy = buildStage.instructions.find((i) => i.keyword === 'COPY')!;
    expect(copySources(firstCopy).sort()).toEqual(['package-lock.json', 'package.json']);
  });

  it('the runtime stage gets node_modules, dist, bin, package.json and the alerts files the drill reads, and never src/', () => {
    const copies = [...finalOf('COPY'), ...finalOf('ADD')];
    const entries: string[] = [];
    for (const c of copies) {
      for (const s of copySources(c)) {
        const segments = s.split('/').filter(Boolean);
        expect(segments, `${c.keyword} ${c.args}`).not.toContain('src');
        expect(['.', './', '/app', '/app/', '*']).not.toContain(s);
        entries.push(c.flags.from ? (segments.at(-1) ?? s) : s);
        if (c.flags.from) expect(c.flags.from).toBe('build');
      }
    }
    // alerts/: `dbpilot drill --with-prometheus` reads the rules and the Alertmanager example (src/drill/alert-path.ts).
    expect(entries.sort()).toEqual(['alerts/alertmanager.example.yml', 'alerts/dbpilot.rules.yml', 'bin', 'dist', 'node_modules', 'package.json']);
    expect(finalOf('ADD')).toHaveLength(0);
  });

  it('bin/dbpilot.js runs dist/ when src/ is absent, and the build writes dist/cli.js', () => {
    const bin = read('bin/dbpilot.js');
    expect(bin).toMatch(/existsSync\(`\$\{root\}src\/cli\.ts`\)/);
    expect(bin).toContain("import('../dist/cli.js')");
    const build = JSON.parse(read('tsconfig.build.json')) as { compilerOptions: { rootDir: string; outDir: string } };
    expect(build.compilerOptions).toMatchObject({ rootDir: 'src', outDir: 'dist' });
    expect(existsSync(path.join(ROOT, 'src', 'cli.ts'))).toBe(true);
  });

  it('runs as the numeric non-root user 10001, owning only the store directory', () => {
    const user = lastOf('USER')!.args;
    expect(user).toMatch(/^10001(:10001)?$/);
    const run = finalOf('RUN').map((r) => r.args).join('\n');
    expect(run).toMatch(/useradd [^\n]*--uid 10001/);
    expect(run).toMatch(/chown 10001:10001 \/var\/lib\/dbpilot/);
    // USER comes after every RUN and COPY, so nothing later runs as root.
    const userLine = lastOf('USER')!.line;
    for (const i of [...finalOf('RUN'), ...finalOf('COPY')]) expect(i.line).toBeLessThan(userLine);
    const env = envOf(finalStage);
    expect(path.posix.dirname(env.DBPILOT_STORE_PATH!)).toBe('/var/lib/dbpilot');
    expect(execForm(lastOf('VOLUME'))).toEqual(['/var/lib/dbpilot']);
  });

  it('ENTRYPOINT node <V8 flags> bin/dbpilot.js, CMD serve, EXPOSE 9630 (the port DBPILOT_LISTEN names)', () => {
    const entry = execForm(lastOf('ENTRYPOINT'));
    expect(entry[0]).toBe('node');
    expect(entry.at(-1)).toBe('bin/dbpilot.js');
    // The flags are what the bench runs (bench/dbpilot-build.ts reads this line), and this Node accepts them.
    const flags = entry.slice(1, -1);
    expect(flags).toEqual(imageNodeFlags(read('Dockerfile')));
    expect(flags.every((f) => f.startsWith('--'))).toBe(true);
    const r = spawnSync(process.execPath, [...flags, '-e', 'process.exit(0)'], { encoding: 'utf8' });
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    expect(execForm(lastOf('CMD'))).toEqual(['serve']);
    expect(lastOf('EXPOSE')!.args.split(/\s+/)).toEqual(['9630']);
    expect(envOf(finalStage).DBPILOT_LISTEN).toBe('0.0.0.0:9630');
    expect(lastOf('WORKDIR')!.args).toBe('/app');
  });

  it('HEALTHCHECK asks /-/healthy with node (no curl or wget in the slim image)', () => {
    const hc = lastOf('HEALTHCHECK')!;
    expect(hc.args.startsWith('CMD ')).toBe(true);
    const cmd = JSON.parse(hc.args.slice(4)) as string[];
    expect(cmd[0]).toBe('node');
    expect(cmd.join(' ')).toContain('/-/healthy');
    expect(cmd.join(' ')).not.toMatch(/\b(curl|wget)\b/);
    expect(hc.flags).toMatchObject({ interval: expect.any(String), timeout: expect.any(String) });
  });

  it('.dockerignore allows exactly what the Dockerfile copies from the context', () => {
    const rules = read('.dockerignore')
      .split('\n')
      .map((l) => l.trim())
      .filter((l) => l && !l.startsWith('#'));
    expect(rules[0]).toBe('*');
    const allowed = rules.slice(1).map((r) => {
      expect(r.startsWith('!')).toBe(true);
      return r.slice(1);
    });
    const fromContext = dockerfile.stages
      .flatMap((s) => s.instructions)
      .filter((i) => (i.keyword === 'COPY' || i.keyword === 'ADD') && !i.flags.from)
      .flatMap(copySources);
    expect([...new Set(fromContext)].sort()).toEqual([...allowed].sort());
  });
});

// =============================================================================================
// Helm chart

const chart = loadChart(CHART_DIR);

/** Kubernetes' common labels the chart puts on everything. */
const COMMON_LABELS = ['app.kubernetes.io/name', 'app.kubernetes.io/instance', 'app.kubernetes.io/version', 'app.kubernetes.io/managed-by', 'helm.sh/chart'];

/** All the optional parts on, so every template is checked. */
/** Services whose Prisma migrations dbpilot re-runs: one by restarting its deployment, one by a Job from its suspended CronJob. */
const PRISMA_SERVICES = [
  { name: 'order-payment-service', healthUrl: 'http://order-payment-service.lomash-wood.svc:3000/health', deployment: 'order-payment-service', prisma: { database: 'lomash_orders', migrateDeploy: 'restart' } },
  { name: 'auth-service', healthUrl: 'http://auth-service.lomash-wood.svc:3000/health', deployment: 'auth-service', prisma: { database: 'lomash_auth', migrateDeploy: 'job', cronJob: 'auth-service-migrate' } },
];
const ALL_ON: Dict = { serviceMonitor: { enabled: true }, prometheusRule: { enabled: true }, config: { services: PRISMA_SERVICES } };

function render(opts: RenderOptions = {}): Manifest[] {
  return renderChart(chart, opts).manifests;
}

function one(manifests: Manifest[], kind: string): K8s {
  const found = manifests.filter((m) => m.doc.kind === kind);
  if (found.length !== 1) throw new Error(`expected one ${kind}, got ${found.length}`);
  return found[0]!.doc;
}

function container(manifests: Manifest[]): K8s {
  const sts = one(manifests, 'StatefulSet');
  const containers = sts.spec.template.spec.containers as K8s[];
  expect(containers).toHaveLength(1);
  return containers[0];
}

function envVar(c: K8s, name: string): K8s {
  const found = (c.env as K8s[]).filter((e) => e.name === name);
  if (found.length !== 1) throw new Error(`expected one env ${name}, got ${found.length}`);
  return found[0];
}

/** A stand-in for each Secret key: long enough for webhook.token (16+). */
// 32 characters, like a real PagerDuty routing key (dbpilot refuses any other length at start).
const secretValue = (key: string): string => `test-secret-${key}`.padEnd(32, 'x').slice(0, 32);

/** The environment the container gets: literal values, Secret keys (stand-ins) and the downward API. */
function podEnvironment(c: K8s, podName = 'dbpilot-0', podIP = '10.1.2.3'): Record<string, string> {
  const env: Record<string, string> = {};
  for (const e of c.env as K8s[]) {
    if (typeof e.value === 'string') env[e.name] = e.value;
    else if (e.valueFrom?.secretKeyRef) env[e.name] = secretValue(e.valueFrom.secretKeyRef.key);
    else if (e.valueFrom?.fieldRef?.fieldPath === 'metadata.name') env[e.name] = podName;
    else if (e.valueFrom?.fieldRef?.fieldPath === 'status.podIP') env[e.name] = podIP;
    else throw new Error(`env ${e.name}: unsupported source ${JSON.stringify(e.valueFrom)}`);
  }
  return env;
}

/** The rendered dbpilot.yaml, written where a test can point DBPILOT_CONFIG at it. */
function configFileOf(manifests: Manifest[], c: K8s, dir: string): string {
  const cm = one(manifests, 'ConfigMap');
  const configPath = envVar(c, 'DBPILOT_CONFIG').value as string;
  const mount = (c.volumeMounts as K8s[]).find((m) => m.mountPath === path.posix.dirname(configPath));
  expect(mount, 'the configuration directory is mounted').toBeDefined();
  expect(mount.readOnly).toBe(true);
  const sts = one(manifests, 'StatefulSet');
  const volume = (sts.spec.template.spec.volumes as K8s[]).find((v) => v.name === mount.name);
  expect(volume.configMap.name).toBe(cm.metadata.name);
  const text = cm.data[path.posix.basename(configPath)] as string;
  expect(typeof text).toBe('string');
  const file = path.join(dir, 'dbpilot.yaml');
  writeFileSync(file, text);
  return file;
}

// ---------------------------------------------------------------------------------------------
// The Kubernetes API calls dbpilot makes

/**
 * Every client-node call in src/integrations/kubernetes.ts and the RBAC permission it needs. The
 * test below re-reads the source: a call added there without a line here (and in the Role) fails.
 */
const API_CALLS: Record<string, { apiGroup: string; resource: string; verb: string; usedBy: string; clusterScoped?: true }> = {
  'core.readNamespacedSecret': { apiGroup: '', resource: 'secrets', verb: 'get', usedBy: 'readSecretKey' },
  'core.patchNamespacedSecret': { apiGroup: '', resource: 'secrets', verb: 'patch', usedBy: 'replaceSecretKey / patchSecretKeyIfUnchanged' },
  'apps.patchNamespacedDeployment': { apiGroup: 'apps', resource: 'deployments', verb: 'patch', usedBy: 'rolloutRestart' },
  'apps.patchNamespacedStatefulSet': { apiGroup: 'apps', resource: 'statefulsets', verb: 'patch', usedBy: 'rolloutRestart' },
  'apps.readNamespacedDeployment': { apiGroup: 'apps', resource: 'deployments', verb: 'get', usedBy: 'readRolloutStatus / waitForRollout' },
  'apps.readNamespacedStatefulSet': { apiGroup: 'apps', resource: 'statefulsets', verb: 'get', usedBy: 'readRolloutStatus / waitForRollout' },
  'core.listNamespacedPod': { apiGroup: '', resource: 'pods', verb: 'list', usedBy: 'listPods' },
  'core.readNamespacedPod': { apiGroup: '', resource: 'pods', verb: 'get', usedBy: 'readPod (the primary pod when a failover is confirmed; the leader pod before forwarding to it; the Redis pod in scenario 5 pages)' },
  'core.readNamespacedConfigMap': { apiGroup: '', resource: 'configmaps', verb: 'get', usedBy: 'readConfigMap (the failover intent)' },
  'core.createNamespacedConfigMap': { apiGroup: '', resource: 'configmaps', verb: 'create', usedBy: 'createConfigMap (the failover intent)' },
  'core.replaceNamespacedConfigMap': { apiGroup: '', resource: 'configmaps', verb: 'update', usedBy: 'replaceConfigMap (the failover intent)' },
  'core.patchNamespacedPod': { apiGroup: '', resource: 'pods', verb: 'patch', usedBy: 'labelPod' },
  'core.readNamespacedPersistentVolumeClaim': { apiGroup: '', resource: 'persistentvolumeclaims', verb: 'get', usedBy: 'readPvc' },
  'core.patchNamespacedPersistentVolumeClaim': { apiGroup: '', resource: 'persistentvolumeclaims', verb: 'patch', usedBy: 'resizePvc' },
  'coordination.readNamespacedLease': { apiGroup: 'coordination.k8s.io', resource: 'leases', verb: 'get', usedBy: 'readLease (leader election)' },
  'coordination.createNamespacedLease': { apiGroup: 'coordination.k8s.io', resource: 'leases', verb: 'create', usedBy: 'createLease (leader election)' },
  'coordination.replaceNamespacedLease': { apiGroup: 'coordination.k8s.io', resource: 'leases', verb: 'update', usedBy: 'replaceLease (leader election)' },
  'coordination.deleteNamespacedLease': { apiGroup: 'coordination.k8s.io', resource: 'leases', verb: 'delete', usedBy: 'deleteLease' },
  'batch.readNamespacedCronJob': { apiGroup: 'batch', resource: 'cronjobs', verb: 'get', usedBy: 'createJobFromCronJob (scenario 4: the service’s suspended migrate CronJob)' },
  'batch.createNamespacedJob': { apiGroup: 'batch', resource: 'jobs', verb: 'create', usedBy: 'createJobFromCronJob (scenario 4: re-run prisma migrate deploy)' },
  'batch.readNamespacedJob': { apiGroup: 'batch', resource: 'jobs', verb: 'get', usedBy: 'readJob (scenario 4: did migrate deploy complete)' },
  'storage.readStorageClass': { apiGroup: 'storage.k8s.io', resource: 'storageclasses', verb: 'get', usedBy: 'readStorageClass (scenario 3: may the PVC grow)', clusterScoped: true },
};

/** What only the disk-full handler needs (scenario 3): with its mode off, the Role grants none of it. */
const PVC_PERMISSIONS = ['core/persistentvolumeclaims:get', 'core/persistentvolumeclaims:patch'];

/** What only a service that re-runs migrate deploy as a Job needs: without one (and names restricted), the Role grants none of it. */
const JOB_PERMISSIONS = ['batch/cronjobs:get', 'batch/jobs:create', 'batch/jobs:get'];

/** What the client-node generated method names mean: verb prefix → RBAC verb, Kind → resource. */
const VERB_OF: Record<string, string> = { read: 'get', list: 'list', create: 'create', replace: 'update', patch: 'patch', delete: 'delete' };
const RESOURCE_OF: Record<string, string> = {
  Secret: 'secrets',
  Deployment: 'deployments',
  StatefulSet: 'statefulsets',
  Pod: 'pods',
  PersistentVolumeClaim: 'persistentvolumeclaims',
  Lease: 'leases',
  ConfigMap: 'configmaps',
  CronJob: 'cronjobs',
  Job: 'jobs',
  StorageClass: 'storageclasses',
};
const GROUP_OF: Record<string, string> = { core: '', apps: 'apps', coordination: 'coordination.k8s.io', batch: 'batch', storage: 'storage.k8s.io' };

const permission = (p: { apiGroup: string; resource: string; verb: string }): string => `${p.apiGroup || 'core'}/${p.resource}:${p.verb}`;
/** What the namespaced Role must grant, and what only a ClusterRole can (cluster-scoped kinds). */
const NEEDED = new Set(Object.values(API_CALLS).filter((p) => !p.clusterScoped).map(permission));
const NEEDED_CLUSTER = new Set(Object.values(API_CALLS).filter((p) => p.clusterScoped).map(permission));

/** Every (apiGroup, resource, verb) a Role grants, and the resourceNames each is limited to ([] = all). */
function grants(role: K8s): Map<string, string[][]> {
  const out = new Map<string, string[][]>();
  for (const rule of role.rules as K8s[]) {
    for (const apiGroup of rule.apiGroups as string[]) {
      for (const resource of rule.resources as string[]) {
        for (const verb of rule.verbs as string[]) {
          const key = permission({ apiGroup, resource, verb });
          out.set(key, [...(out.get(key) ?? []), (rule.resourceNames as string[] | undefined) ?? []]);
        }
      }
    }
  }
  return out;
}

describe('the Kubernetes API calls dbpilot makes', () => {
  const source = read('src/integrations/kubernetes.ts');

  it('are exactly the calls in src/integrations/kubernetes.ts', () => {
    const calls = new Set([...source.matchAll(/this\.(core|apps|coordination|batch|storage)\.(\w+)\(/g)].map((m) => `${m[1]}.${m[2]}`));
    expect([...calls].sort()).toEqual(Object.keys(API_CALLS).sort());
    // The API objects are the ones the field names say.
    expect(source).toMatch(/this\.core = kc\.makeApiClient\(CoreV1Api\)/);
    expect(source).toMatch(/this\.apps = kc\.makeApiClient\(AppsV1Api\)/);
    expect(source).toMatch(/this\.coordination = kc\.makeApiClient\(CoordinationV1Api\)/);
    expect(source).toMatch(/this\.batch = kc\.makeApiClient\(BatchV1Api\)/);
    expect(source).toMatch(/this\.storage = kc\.makeApiClient\(StorageV1Api\)/);
  });

  it('map to RBAC permissions by client-node naming (verb prefix, Kind → resource)', () => {
    for (const [call, p] of Object.entries(API_CALLS)) {
      // A namespaced kind's methods say Namespaced; a cluster-scoped kind's (StorageClass) do not.
      const m = /^(\w+)\.(read|list|create|replace|patch|delete)(Namespaced)?(\w+)$/.exec(call);
      expect(m, call).not.toBeNull();
      expect({ apiGroup: GROUP_OF[m![1]!], verb: VERB_OF[m![2]!], resource: RESOURCE_OF[m![4]!], clusterScoped: m![3] === undefined }, call).toEqual({
        apiGroup: p.apiGroup,
        verb: p.verb,
        resource: p.resource,
        clusterScoped: p.clusterScoped === true,
      });
    }
  });

  it('are made only through KubernetesClient (no other module talks to the API)', () => {
    const offenders: string[] = [];
    const walk = (dir: string): void => {
      for (const e of readdirSync(path.join(ROOT, dir), { withFileTypes: true })) {
        const rel = path.posix.join(dir, e.name);
        if (e.isDirectory()) walk(rel);
        // An import (static or dynamic) of the client, not a mention: the drill's API stand-in names it in its comments.
        else if (rel.endsWith('.ts') && rel !== 'src/integrations/kubernetes.ts' && /(from|import\()\s*['"]@kubernetes\/client-node['"/]/.test(read(rel))) offenders.push(rel);
      }
    };
    walk('src');
    expect(offenders).toEqual([]);
    // The leader elector uses the client's Lease methods.
    const leader = read('src/coordination/leader.ts');
    for (const m of ['readLease', 'createLease', 'replaceLease']) expect(leader).toContain(`kube.${m}(`);
  });
});

describe('Helm chart', () => {
  it('Chart.yaml: apiVersion v2, appVersion = package.json version', () => {
    expect(chart.metadata).toMatchObject({ apiVersion: 'v2', name: 'dbpilot', type: 'application', appVersion: pkg.version });
    expect(String(chart.metadata.version)).toMatch(/^\d+\.\d+\.\d+$/);
  });

  it('files/dbpilot.rules.yml is a byte-identical copy of alerts/dbpilot.rules.yml', () => {
    expect(readFileSync(path.join(CHART_DIR, 'files', 'dbpilot.rules.yml')).equals(readFileSync(path.join(ROOT, 'alerts', 'dbpilot.rules.yml')))).toBe(true);
  });

  describe.each([
    ['defaults', {} as Dict],
    ['everything on', ALL_ON],
    ['no persistence, names unrestricted', { ...ALL_ON, persistence: { enabled: false }, rbac: { restrictToConfiguredNames: false } }],
  ])('rendered with %s', (_label, values) => {
    const manifests = render({ values });

    it('every manifest has apiVersion, kind, metadata.name, the namespace and the common labels', () => {
      expect(manifests.length).toBeGreaterThanOrEqual(7);
      for (const { source, doc } of manifests) {
        expect(doc.apiVersion, source).toEqual(expect.any(String));
        expect(doc.kind, source).toEqual(expect.any(String));
        expect(doc.metadata?.name, source).toMatch(/^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/);
        expect(doc.metadata.name.length, source).toBeLessThanOrEqual(63);
        // Cluster-scoped objects have no namespace.
        if (doc.kind === 'ClusterRole' || doc.kind === 'ClusterRoleBinding') expect(doc.metadata.namespace, source).toBeUndefined();
        else expect(doc.metadata.namespace, source).toBe('lomash-wood');
        for (const l of COMMON_LABELS) expect(doc.metadata.labels?.[l], `${source}: label ${l}`).toEqual(expect.any(String));
        expect(doc.metadata.labels['app.kubernetes.io/name']).toBe('dbpilot');
        expect(doc.metadata.labels['app.kubernetes.io/managed-by']).toBe('Helm');
      }
      const kinds = manifests.map((m) => m.doc.kind as string);
      for (const k of ['ConfigMap', 'Service', 'ServiceAccount', 'Role', 'RoleBinding', 'StatefulSet', 'PodDisruptionBudget']) expect(kinds).toContain(k);
      // One ClusterRole and its binding (the disk-full handler's StorageClass read), never more.
      expect(kinds.filter((k) => k === 'ClusterRole')).toHaveLength(1);
      expect(kinds.filter((k) => k === 'ClusterRoleBinding')).toHaveLength(1);
      expect(new Set(manifests.map((m) => `${m.doc.kind}/${m.doc.metadata.name}`)).size).toBe(manifests.length);
    });

    it('the Role grants exactly the permissions of those API calls: no wildcard, namespaced', () => {
      const role = one(manifests, 'Role');
      expect(role.apiVersion).toBe('rbac.authorization.k8s.io/v1');
      const g = grants(role);
      // The Job permissions only where a service re-runs migrate deploy as a Job, or names are not restricted.
      const v = values as K8s;
      const jobs = v.rbac?.restrictToConfiguredNames === false || ((v.config?.services ?? []) as K8s[]).some((x) => x.prisma?.migrateDeploy === 'job');
      expect([...g.keys()].sort()).toEqual([...NEEDED].filter((p) => jobs || !JOB_PERMISSIONS.includes(p)).sort());
      for (const rule of role.rules as K8s[]) {
        expect(rule.nonResourceURLs).toBeUndefined();
        for (const field of ['apiGroups', 'resources', 'verbs', 'resourceNames']) {
          for (const v of (rule[field] as string[] | undefined) ?? []) expect(v, `${field} in ${JSON.stringify(rule)}`).not.toContain('*');
        }
        expect((rule.resources as string[]).every((r) => !r.includes('/')), 'no subresources').toBe(true);
      }
      // create and list cannot be limited by name: a rule that did so would silently deny them.
      for (const verb of ['coordination.k8s.io/leases:create', 'core/configmaps:create', 'core/pods:list', ...(jobs ? ['batch/jobs:create'] : [])]) {
        expect(g.get(verb)!.some((names) => names.length === 0), verb).toBe(true);
      }
    });

    it('the ClusterRole grants get on storageclasses and nothing else, bound to the pod’s ServiceAccount only', () => {
      const cr = one(manifests, 'ClusterRole');
      const g = grants(cr);
      expect([...g.keys()].sort()).toEqual([...NEEDED_CLUSTER].sort());
      expect(g.get('storage.k8s.io/storageclasses:get')).toEqual([[]]);
      expect(cr.aggregationRule).toBeUndefined();
      const binding = one(manifests, 'ClusterRoleBinding');
      const sa = one(manifests, 'ServiceAccount');
      expect(binding.roleRef).toEqual({ apiGroup: 'rbac.authorization.k8s.io', kind: 'ClusterRole', name: cr.metadata.name });
      expect(binding.subjects).toEqual([{ kind: 'ServiceAccount', name: sa.metadata.name, namespace: sa.metadata.namespace }]);
      // Unique in the cluster: the release and the namespace it acts in.
      expect(cr.metadata.name).toBe('dbpilot-lomash-wood-storageclasses');
    });

    it('the Role lives where dbpilot acts and is bound to the pod’s ServiceAccount only', () => {
      const role = one(manifests, 'Role');
      const binding = one(manifests, 'RoleBinding');
      const sa = one(manifests, 'ServiceAccount');
      const sts = one(manifests, 'StatefulSet');
      const config = parseYaml(one(manifests, 'ConfigMap').data['dbpilot.yaml'] as string) as K8s;
      expect(role.metadata.namespace).toBe(config.kubernetes.namespace);
      expect(binding.metadata.namespace).toBe(role.metadata.namespace);
      expect(binding.roleRef).toEqual({ apiGroup: 'rbac.authorization.k8s.io', kind: 'Role', name: role.metadata.name });
      expect(binding.subjects).toEqual([{ kind: 'ServiceAccount', name: sa.metadata.name, namespace: sa.metadata.namespace }]);
      expect(sts.spec.template.spec.serviceAccountName).toBe(sa.metadata.name);
      expect(sts.spec.template.spec.automountServiceAccountToken).not.toBe(false);
    });

    it('the pod runs as non-root with a read-only root file system; only the store, /tmp are writable', () => {
      const sts = one(manifests, 'StatefulSet');
      const pod = sts.spec.template.spec;
      const c = container(manifests);
      expect(pod.securityContext).toMatchObject({ runAsNonRoot: true, runAsUser: 10001, fsGroup: 10001 });
      expect(String(pod.securityContext.runAsUser)).toBe(lastOf('USER')!.args.split(':')[0]);
      expect(pod.securityContext.seccompProfile).toEqual({ type: 'RuntimeDefault' });
      expect(c.securityContext).toMatchObject({ runAsNonRoot: true, readOnlyRootFilesystem: true, allowPrivilegeEscalation: false });
      expect(c.securityContext.privileged).not.toBe(true);
      expect(c.securityContext.capabilities.drop).toContain('ALL');
      expect(c.securityContext.capabilities.add).toBeUndefined();
      for (const host of ['hostNetwork', 'hostPID', 'hostIPC']) expect(pod[host]).not.toBe(true);

      const storePath = envVar(c, 'DBPILOT_STORE_PATH').value as string;
      const storeMount = (c.volumeMounts as K8s[]).find((m) => m.mountPath === path.posix.dirname(storePath));
      expect(storeMount, 'the store directory is a volume').toBeDefined();
      expect(storeMount.readOnly).not.toBe(true);
      const tmpMount = (c.volumeMounts as K8s[]).find((m) => m.mountPath === '/tmp');
      expect(tmpMount?.readOnly).not.toBe(true);
      const volumes = pod.volumes as K8s[];
      const claim = ((sts.spec.volumeClaimTemplates as K8s[] | undefined) ?? []).find((t) => t.metadata.name === storeMount.name);
      const podVolume = volumes.find((v) => v.name === storeMount.name);
      if (values.persistence && (values.persistence as Dict).enabled === false) {
        expect(claim).toBeUndefined();
        expect(podVolume.emptyDir).toBeDefined();
      } else {
        expect(podVolume).toBeUndefined();
        expect(claim.spec.accessModes).toEqual(['ReadWriteOnce']);
        expect(claim.spec.resources.requests.storage).toBe('1Gi');
      }
      expect(volumes.find((v) => v.name === tmpMount.name).emptyDir).toBeDefined();
      // The store matches the image's VOLUME and DBPILOT_STORE_PATH.
      expect(storePath).toBe(envOf(finalStage).DBPILOT_STORE_PATH);
    });

    it('POD_IP comes from status.podIP (the address the leader advertises for forwarding)', () => {
      expect(read('src/remediation/index.ts')).toMatch(/env\.POD_IP/);
      expect(envVar(container(manifests), 'POD_IP').valueFrom).toEqual({ fieldRef: { fieldPath: 'status.podIP' } });
    });

    it('POD_NAME comes from metadata.name (the Lease identity dbpilot reads)', () => {
      expect(read('src/remediation/index.ts')).toMatch(/process\.env\.POD_NAME/);
      expect(envVar(container(manifests), 'POD_NAME').valueFrom).toEqual({ fieldRef: { fieldPath: 'metadata.name' } });
    });

    it('probes: liveness and startup on /-/healthy, readiness on /-/ready, on the named port dbpilot listens on', () => {
      const app = read('src/app.ts');
      expect(app).toContain("fastify.get('/-/healthy'");
      expect(app).toContain("fastify.get('/-/ready'");
      const c = container(manifests);
      expect(c.livenessProbe.httpGet).toEqual({ path: '/-/healthy', port: 'http' });
      expect(c.startupProbe.httpGet).toEqual({ path: '/-/healthy', port: 'http' });
      expect(c.readinessProbe.httpGet).toEqual({ path: '/-/ready', port: 'http' });
      const port = (c.ports as K8s[]).find((p) => p.name === 'http');
      expect(port.containerPort).toBe(9630);
      expect(envVar(c, 'DBPILOT_LISTEN').value).toBe(`0.0.0.0:${port.containerPort}`);
    });

    it('the Service, the PodDisruptionBudget and the StatefulSet select the pods by the same labels', () => {
      const sts = one(manifests, 'StatefulSet');
      const svc = one(manifests, 'Service');
      const pdb = one(manifests, 'PodDisruptionBudget');
      const podLabels = sts.spec.template.metadata.labels as Record<string, string>;
      const matches = (sel: Record<string, string>): boolean => Object.entries(sel).every(([k, v]) => podLabels[k] === v);
      expect(podLabels['app.kubernetes.io/name']).toBe('dbpilot'); // docs/operator-guide.md selects on it
      expect(matches(sts.spec.selector.matchLabels)).toBe(true);
      expect(matches(svc.spec.selector)).toBe(true);
      expect(matches(pdb.spec.selector.matchLabels)).toBe(true);
      expect(sts.spec.serviceName).toBe(svc.metadata.name);
      expect(svc.spec.ports).toEqual([{ name: 'http', port: 9630, targetPort: 'http', protocol: 'TCP' }]);
      expect(pdb.spec.maxUnavailable).toBe(1);
      expect(sts.spec.replicas).toBe(2);
    });

    it('the configuration passes dbpilot’s own loader with the environment the StatefulSet sets', () => {
      const dir = mkdtempSync(path.join(tmpdir(), 'dbpilot-chart-'));
      try {
        const c = container(manifests);
        const file = configFileOf(manifests, c, dir);
        const env = podEnvironment(c);
        // Every ${VAR} without a default is set by the pod.
        const text = readFileSync(file, 'utf8');
        for (const m of text.matchAll(/\$\{([A-Za-z_][A-Za-z0-9_]*)(:-[^}]*)?\}/g)) {
          if (!m[2]) expect(env, `\${${m[1]}} in dbpilot.yaml`).toHaveProperty(m[1]!);
        }
        // Every Secret reference points at existingSecret.
        for (const e of c.env as K8s[]) if (e.valueFrom?.secretKeyRef) expect(e.valueFrom.secretKeyRef.name).toBe('dbpilot-secrets');
        // DBPILOT_CONFIG names the mounted file; here, the same text at a temp path.
        const { config, source } = loadConfig({ env: { ...env, DBPILOT_CONFIG: file }, cwd: dir });
        expect(source).toBe(file);
        expect(config.listen).toBe('0.0.0.0:9630');
        expect(config.store.path).toBe('/var/lib/dbpilot/dbpilot.sqlite');
        expect(config.webhook.token).toBe(secretValue('webhook-token'));
        expect(Object.keys(config.pagerduty.routes).sort()).toEqual(['devops', 'em-dba', 'lead-dba', 'oncall-backend']);
        // Two replicas are only safe with leader election.
        expect(config.kubernetes?.namespace).toBe('lomash-wood');
        expect(config.kubernetes?.lease.name).toBe('dbpilot-leader');
        expect(config.postgres.primary.url).not.toMatch(/:[^/@]*@/); // no password in the ConfigMap
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    });
  });

  it('restricts the Role to the objects named in the configuration, and omits a kind with none', () => {
    const role = one(render(), 'Role');
    const g = grants(role);
    const config = chart.values.config as K8s;
    const names = (p: string): string[] => g.get(p)!.flat();
    expect(names('core/secrets:get')).toEqual(config.kubernetes.secrets.map((s: K8s) => s.name));
    expect(names('core/secrets:patch')).toEqual(names('core/secrets:get'));
    expect(names('apps/deployments:patch')).toEqual(config.kubernetes.deployments);
    expect(names('apps/statefulsets:patch')).toEqual([config.kubernetes.redisStatefulSet]);
    for (const v of ['get', 'update', 'delete']) expect(names(`coordination.k8s.io/leases:${v}`)).toEqual([config.kubernetes.lease.name]);
    // The failover intent beside the Lease, and nothing else of the namespace's ConfigMaps.
    for (const v of ['get', 'update']) expect(names(`core/configmaps:${v}`)).toEqual([`${config.kubernetes.lease.name}-failover`]);
    // The eight services of DESIGN.md.
    expect(config.kubernetes.deployments).toHaveLength(8);

    // An empty list must not turn into "every secret" (an empty resourceNames means all).
    const none = grants(one(render({ values: { config: { kubernetes: { secrets: [], deployments: [] } } } }), 'Role'));
    expect(none.has('core/secrets:get')).toBe(false);
    expect(none.has('apps/deployments:patch')).toBe(false);

    // Pods and PVCs are limited when named.
    const named = grants(one(render({ values: { rbac: { podNames: ['postgres-replica-1'], pvcNames: ['data-postgres-primary-0'] } } }), 'Role'));
    // The PostgreSQL pods of config.postgres, dbpilot's own two pods, and the ones named.
    const pods = ['postgres-primary-0', 'postgres-replica-0', 'dbpilot-0', 'dbpilot-1', 'postgres-replica-1'];
    expect(named.get('core/pods:patch')).toEqual([pods]);
    // The Redis pod (scenario 5) is read, never patched: <redisStatefulSet>-0 unless handlers.redis-failure.pod names it.
    const redisPod = `${config.kubernetes.redisStatefulSet}-0`;
    expect(named.get('core/pods:get')).toEqual([[redisPod], pods]);
    expect(grants(one(render(), 'Role')).get('core/pods:get')).toEqual([[redisPod], pods.slice(0, 4)]);
    const namedPod = grants(one(render({ values: { config: { handlers: { 'redis-failure': { pod: 'redis-master-0' } } } } }), 'Role'));
    expect(namedPod.get('core/pods:get')).toEqual([['redis-master-0'], pods.slice(0, 4)]);
    expect(namedPod.get('core/pods:patch')!.flat()).not.toContain('redis-master-0');
    expect(named.get('core/pods:list')).toEqual([[]]);
    // The data PVCs of config.postgres' pods (postgres-data-<pod>, the runbook's claim name), and the one named.
    const pvcs = ['postgres-data-postgres-primary-0', 'postgres-data-postgres-replica-0'];
    expect(named.get('core/persistentvolumeclaims:patch')).toEqual([[...pvcs, 'data-postgres-primary-0']]);
    expect(named.get('core/persistentvolumeclaims:get')).toEqual([[...pvcs, 'data-postgres-primary-0']]);
    expect(grants(one(render(), 'Role')).get('core/persistentvolumeclaims:patch')).toEqual([pvcs]);
    // handlers.disk-full names a pod's claim, or its claim template.
    const custom = grants(
      one(render({ values: { config: { handlers: { 'disk-full': { volumeClaimTemplate: 'data', pvcs: { 'postgres-replica-0': 'pg-replica-volume' } } } } } }), 'Role'),
    );
    expect(custom.get('core/persistentvolumeclaims:patch')).toEqual([['data-postgres-primary-0', 'pg-replica-volume']]);
    // Unrestricted names: the PVC rule is not limited unless rbac.pvcNames says so.
    expect(grants(one(render({ values: { rbac: { restrictToConfiguredNames: false } } }), 'Role')).get('core/persistentvolumeclaims:patch')).toEqual([[]]);
    // StorageClasses named: the ClusterRole is limited to them.
    expect(grants(one(render({ values: { rbac: { storageClassNames: ['gp3'] } } }), 'ClusterRole')).get('storage.k8s.io/storageclasses:get')).toEqual([['gp3']]);
  });

  it('disk-full off (its own mode, or the global one): no PVC rights and no ClusterRole at all', () => {
    for (const config of [{ handlers: { 'disk-full': { mode: 'off' } } }, { mode: 'off' }]) {
      const manifests = render({ values: { config } });
      const g = grants(one(manifests, 'Role'));
      for (const p of PVC_PERMISSIONS) expect(g.has(p), `${JSON.stringify(config)}: ${p}`).toBe(false);
      expect(manifests.map((m) => m.doc.kind)).not.toContain('ClusterRole');
      expect(manifests.map((m) => m.doc.kind)).not.toContain('ClusterRoleBinding');
    }
    // Global off, the handler itself on: its rights are back.
    const on = render({ values: { config: { mode: 'off', handlers: { 'disk-full': { mode: 'approve' } } } } });
    expect(grants(one(on, 'Role')).has('core/persistentvolumeclaims:patch')).toBe(true);
    expect(on.map((m) => m.doc.kind)).toContain('ClusterRole');
  });

  it('grants the Job calls of scenario 4 only for services that re-run migrate deploy as a Job: the CronJobs by name, create and get on jobs (not restrictable)', () => {
    expect([...grants(one(render(), 'Role')).keys()].filter((p) => p.startsWith('batch/'))).toEqual([]);
    const g = grants(one(render({ values: { config: { services: PRISMA_SERVICES } } }), 'Role'));
    expect(g.get('batch/cronjobs:get')).toEqual([['auth-service-migrate']]);
    expect(g.get('batch/jobs:create')).toEqual([[]]);
    expect(g.get('batch/jobs:get')).toEqual([[]]);
    // A service that re-runs by restarting needs nothing new: its deployment is among kubernetes.deployments.
    const restartOnly = grants(one(render({ values: { config: { services: [PRISMA_SERVICES[0]] } } }), 'Role'));
    expect([...restartOnly.keys()].filter((p) => p.startsWith('batch/'))).toEqual([]);
    expect(restartOnly.get('apps/deployments:patch')!.flat()).toContain('order-payment-service');
  });

  it('refuses two replicas without config.kubernetes (every replica would act), and a missing Secret', () => {
    expect(() => render({ values: { config: { kubernetes: null } } })).toThrow(/without a Lease every replica would act/);
    expect(() => render({ values: { existingSecret: '' } })).toThrow(/existingSecret must name the Secret/);
    // One replica without Kubernetes is fine, and then there is no Role at all.
    const single = render({ values: { replicaCount: 1, config: { kubernetes: null } } });
    expect(single.map((m) => m.doc.kind)).not.toContain('Role');
    expect(one(single, 'StatefulSet').spec.replicas).toBe(1);
  });

  it('ServiceMonitor: scrapes port http every 1-5 s as job="dbpilot", the job every alert rule reads', () => {
    const manifests = render({ values: ALL_ON });
    const sm = one(manifests, 'ServiceMonitor');
    const svc = one(manifests, 'Service');
    expect(Object.entries(sm.spec.selector.matchLabels as Record<string, string>).every(([k, v]) => svc.metadata.labels[k] === v)).toBe(true);
    expect(sm.spec.namespaceSelector.matchNames).toEqual([svc.metadata.namespace]);
    const [ep] = sm.spec.endpoints as K8s[];
    expect(ep).toMatchObject({ port: 'http', path: '/metrics' });
    expect(Number.parseFloat(ep.interval)).toBeLessThanOrEqual(5);
    expect(ep.interval).toMatch(/^\d+s$/);
    expect(Number.parseFloat(ep.scrapeTimeout)).toBeLessThanOrEqual(Number.parseFloat(ep.interval));
    const jobRelabel = (ep.relabelings as K8s[]).find((r) => r.targetLabel === 'job');
    const jobs = new Set([...read('alerts/dbpilot.rules.yml').matchAll(/\bjob="([^"]+)"/g)].map((m) => m[1]));
    expect([...jobs]).toEqual([jobRelabel.replacement]);
  });

  it('PrometheusRule: spec.groups are the groups of alerts/dbpilot.rules.yml, unchanged', () => {
    const rule = one(render({ values: ALL_ON }), 'PrometheusRule');
    const original = parseYaml(read('alerts/dbpilot.rules.yml')) as { groups: unknown[] };
    expect(Object.keys(rule.spec)).toEqual(['groups']);
    expect(rule.spec.groups).toEqual(original.groups);
    // Prometheus' own templates survive (Helm does not render .Files.Get output).
    expect(JSON.stringify(rule.spec.groups)).toContain('{{ $labels.server }}');
  });

  it('names follow the release: fullname, and the Lease/Role namespace from the configuration', () => {
    const manifests = render({ releaseName: 'ops', values: ALL_ON });
    for (const { doc } of manifests) {
      expect(doc.metadata.name).toBe(doc.kind.startsWith('Cluster') ? 'ops-dbpilot-lomash-wood-storageclasses' : 'ops-dbpilot');
      expect(doc.metadata.labels['app.kubernetes.io/instance']).toBe('ops');
    }
    const overridden = render({ releaseName: 'ops', values: { fullnameOverride: 'pilot', image: { tag: '9.9.9' } } });
    expect(one(overridden, 'StatefulSet').metadata.name).toBe('pilot');
    expect(container(overridden).image).toBe('ghcr.io/lomash-wood/dbpilot:9.9.9');
    const digest = render({ values: { image: { digest: 'sha256:abc' } } });
    expect(container(digest).image).toBe('ghcr.io/lomash-wood/dbpilot@sha256:abc');
  });

  it('NOTES.txt tells where the webhook is and how to read the audit log', () => {
    const { notes } = renderChart(chart, {});
    expect(notes).toContain('http://dbpilot.lomash-wood.svc:9630/alertmanager/webhook');
    expect(notes).toContain('kubectl exec -n lomash-wood dbpilot-0 -- dbpilot audit');
    expect(notes).toContain('app.kubernetes.io/name=dbpilot');
    expect(renderChart(chart, { values: { persistence: { enabled: false } } }).notes).toMatch(/WARNING: persistence\.enabled is false/);
  });

  /** Manifests keyed by kind/name, the config checksum dropped and dbpilot.yaml parsed (formatting may differ). */
  const comparable = (manifests: Manifest[]): Record<string, unknown> => {
    const out: Record<string, unknown> = {};
    for (const { doc } of manifests) {
      const d = structuredClone(doc) as K8s;
      if (d.spec?.template?.metadata?.annotations) delete d.spec.template.metadata.annotations['checksum/config'];
      if (d.kind === 'ConfigMap') d.data['dbpilot.yaml'] = parseYaml(d.data['dbpilot.yaml']);
      out[`${d.kind}/${d.metadata.name}`] = d;
    }
    return out;
  };
  const helm = findHelm();

  describe.skipIf(helm === null)(`compared with \`helm template\` (${helm ?? 'no helm binary: skipped'})`, () => {
    it.each([
      ['defaults', {}],
      ['everything on', ALL_ON],
      [
        'variations',
        { ...ALL_ON, persistence: { enabled: false }, rbac: { restrictToConfiguredNames: false, podNames: ['p-0'] }, affinity: { nodeAffinity: {} }, env: [{ name: 'X', value: 'y' }], fullnameOverride: 'pilot' },
      ],
      ['a single replica without Kubernetes', { replicaCount: 1, config: { kubernetes: null }, podDisruptionBudget: { enabled: false } }],
    ] as [string, Dict][])('renders %s the same', (_label, values) => {
      expect(comparable(render({ values }))).toEqual(comparable(helmTemplate(helm!, CHART_DIR, { values })));
    });

    it('refuses the same unsafe values', () => {
      expect(helmTemplateError(helm!, CHART_DIR, { values: { config: { kubernetes: null } } })).toMatch(/without a Lease every replica would act/);
      expect(helmTemplateError(helm!, CHART_DIR, { values: { existingSecret: '' } })).toMatch(/existingSecret must name the Secret/);
    });
  });
});

// =============================================================================================
// The image's file layout, run

describe('the runtime stage’s layout (dist/ without src/), run', () => {
  let app = '';
  let child: ChildProcess | null = null;

  beforeAll(() => {
    app = mkdtempSync(path.join(tmpdir(), 'dbpilot-image-'));
    // What the runtime stage copies: dist (built fresh, as `npm run build` does), bin, package.json,
    // node_modules (here the checkout's, dev dependencies included: prune is npm's business).
    const tsc = spawnSync(process.execPath, [path.join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', path.join(ROOT, 'tsconfig.build.json'), '--outDir', path.join(app, 'dist'), '--sourceMap', 'false'], {
      encoding: 'utf8',
      timeout: 240_000,
    });
    if (tsc.status !== 0) throw new Error(`tsc failed: ${tsc.stdout}${tsc.stderr}`);
    cpSync(path.join(ROOT, 'bin'), path.join(app, 'bin'), { recursive: true });
    cpSync(path.join(ROOT, 'package.json'), path.join(app, 'package.json'));
    symlinkSync(path.join(ROOT, 'node_modules'), path.join(app, 'node_modules'), 'dir');
    mkdirSync(path.join(app, 'store'));
  }, 300_000);

  afterAll(async () => {
    if (child && child.exitCode === null && child.signalCode === null) {
      const exited = new Promise((r) => child!.once('exit', r));
      child.kill('SIGKILL');
      await exited;
    }
    if (app) rmSync(app, { recursive: true, force: true });
  });

  /** The chart's container environment, the PATH to run node, and the overrides a test needs. */
  const envFor = (manifests: Manifest[], configFile: string, extra: Record<string, string> = {}): NodeJS.ProcessEnv => ({
    PATH: process.env.PATH,
    ...podEnvironment(container(manifests)),
    DBPILOT_CONFIG: configFile,
    ...extra,
  });

  it('has no src/, so bin/dbpilot.js takes dist/', () => {
    expect(existsSync(path.join(app, 'src'))).toBe(false);
    expect(existsSync(path.join(app, 'dist', 'cli.js'))).toBe(true);
  });

  it('`dbpilot check-config` accepts the chart’s configuration with the pod’s environment', () => {
    const manifests = render();
    const file = configFileOf(manifests, container(manifests), app);
    // check-config loads the Kubernetes configuration as serve does (without contacting the API). There is
    // no service account here: a kubeconfig names the in-cluster API server and a token instead.
    const kubeconfig = path.join(app, 'kubeconfig');
    writeFileSync(
      kubeconfig,
      [
        'apiVersion: v1',
        'kind: Config',
        'clusters: [{ name: in-cluster, cluster: { server: "https://kubernetes.default.svc" } }]',
        'users: [{ name: sa, user: { token: "service-account-token" } }]',
        'contexts: [{ name: in-cluster, context: { cluster: in-cluster, user: sa, namespace: lomash-wood } }]',
        'current-context: in-cluster',
        '',
      ].join('\n'),
    );
    const r = spawnSync(process.execPath, ['bin/dbpilot.js', 'check-config', '--json'], { cwd: app, env: { ...envFor(manifests, file), KUBECONFIG: kubeconfig }, encoding: 'utf8', timeout: 60_000 });
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    const printed = JSON.parse(r.stdout) as K8s;
    expect(printed).toMatchObject({ listen: '0.0.0.0:9630', store: { path: '/var/lib/dbpilot/dbpilot.sqlite' }, webhook: { token: '[REDACTED]' } });
    expect(r.stdout).not.toContain('test-secret-');
  });

  it('`serve` starts, the image’s HEALTHCHECK command passes, and /-/ready answers', async () => {
    // A single replica without Kubernetes (there is no cluster here); loopback addresses only.
    const manifests = render({ values: { replicaCount: 1, config: { kubernetes: null } } });
    const file = configFileOf(manifests, container(manifests), app);
    const port = await freePort();
    const env = envFor(manifests, file, {
      DBPILOT_LISTEN: `127.0.0.1:${port}`,
      DBPILOT_STORE_PATH: path.join(app, 'store', 'dbpilot.sqlite'),
      DBPILOT_PRIMARY_URL: 'postgres://dbpilot@127.0.0.1:1/postgres',
      DBPILOT_REPLICA_URLS: 'postgres://dbpilot@127.0.0.1:1/postgres',
      DBPILOT_REDIS_URL: 'redis://127.0.0.1:1',
    });
    child = spawn(process.execPath, ['bin/dbpilot.js', 'serve'], { cwd: app, env, stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    child.stdout!.on('data', (d: Buffer) => (output += d.toString()));
    child.stderr!.on('data', (d: Buffer) => (output += d.toString()));
    const hc = JSON.parse(lastOf('HEALTHCHECK')!.args.slice(4)) as string[];
    const healthcheck = (): number | null => spawnSync(hc[0] === 'node' ? process.execPath : hc[0]!, hc.slice(1), { env, timeout: 10_000 }).status;
    const deadline = Date.now() + 30_000;
    let status = healthcheck();
    while (status !== 0 && Date.now() < deadline && child.exitCode === null) {
      await new Promise((r) => setTimeout(r, 250));
      status = healthcheck();
    }
    expect(status, output).toBe(0);
    const ready = await fetch(`http://127.0.0.1:${port}/-/ready`);
    expect(ready.status).toBe(200);
    expect(existsSync(path.join(app, 'store', 'dbpilot.sqlite'))).toBe(true);
    const exited = new Promise<number | null>((r) => child!.once('exit', (code) => r(code)));
    child.kill('SIGTERM');
    expect(await exited).toBe(0);
    // Once it is gone the HEALTHCHECK fails.
    expect(healthcheck()).not.toBe(0);
  }, 90_000);
});
