/**
 * Every manifest the chart renders, for every value set below (those test/deploy/deploy.test.ts
 * renders, plus the dashboard ConfigMap and the NetworkPolicy on), checked against the Kubernetes
 * API's own schemas: each object is constructed as its `kubernetes-models` class (the API's OpenAPI
 * schemas; prometheus-operator's CRD schemas for ServiceMonitor and PrometheusRule) and validated —
 * types, required fields, enums, formats — and, as the API server's strict field validation
 * (`kubectl apply --validate=strict`) does, any field the schema does not know fails too, so a
 * misspelt field fails here instead of being silently dropped at `helm install`.
 *
 * Also: the dashboard ConfigMap (the Grafana sidecar's label, exactly the bytes of
 * grafana/database-dashboard.json through a byte-identical copy in helm/dbpilot/files/) and the
 * NetworkPolicy (it selects dbpilot's pods, lets Prometheus, Alertmanager and the other replicas in
 * on the port dbpilot listens on, and lets out every port dbpilot's own configuration connects to).
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { PrometheusRule } from '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule';
import { ServiceMonitor } from '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor';
import { StatefulSet } from 'kubernetes-models/apps/v1/StatefulSet';
import { NetworkPolicy } from 'kubernetes-models/networking.k8s.io/v1/NetworkPolicy';
import { PodDisruptionBudget } from 'kubernetes-models/policy/v1/PodDisruptionBudget';
import { ClusterRole } from 'kubernetes-models/rbac.authorization.k8s.io/v1/ClusterRole';
import { ClusterRoleBinding } from 'kubernetes-models/rbac.authorization.k8s.io/v1/ClusterRoleBinding';
import { Role } from 'kubernetes-models/rbac.authorization.k8s.io/v1/Role';
import { RoleBinding } from 'kubernetes-models/rbac.authorization.k8s.io/v1/RoleBinding';
import { ConfigMap } from 'kubernetes-models/v1/ConfigMap';
import { Service } from 'kubernetes-models/v1/Service';
import { ServiceAccount } from 'kubernetes-models/v1/ServiceAccount';
import { describe, expect, it } from 'vitest';
import { parse as parseYaml } from 'yaml';
import { loadChart, renderChart, type Dict, type Manifest } from './helm.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const CHART_DIR = path.join(ROOT, 'helm', 'dbpilot');
const chart = loadChart(CHART_DIR);
const DASHBOARD = readFileSync(path.join(ROOT, 'grafana', 'database-dashboard.json'));

type K8s = any;

/** A kubernetes-models class: construct it from the object, validate() throws on what the schema refuses. */
interface ModelClass {
  new (data: any): { validate(): void };
  prototype: { validate(this: unknown): void };
}

/** apiVersion/kind → the model of the API's own schema. A kind the chart renders without one here fails. */
const MODELS: Record<string, ModelClass> = {
  'v1/ConfigMap': ConfigMap,
  'v1/Service': Service,
  'v1/ServiceAccount': ServiceAccount,
  'apps/v1/StatefulSet': StatefulSet,
  'policy/v1/PodDisruptionBudget': PodDisruptionBudget,
  'rbac.authorization.k8s.io/v1/ClusterRole': ClusterRole,
  'rbac.authorization.k8s.io/v1/ClusterRoleBinding': ClusterRoleBinding,
  'rbac.authorization.k8s.io/v1/Role': Role,
  'rbac.authorization.k8s.io/v1/RoleBinding': RoleBinding,
  'networking.k8s.io/v1/NetworkPolicy': NetworkPolicy,
  'monitoring.coreos.com/v1/ServiceMonitor': ServiceMonitor,
  'monitoring.coreos.com/v1/PrometheusRule': PrometheusRule,
} as Record<string, ModelClass>;

const isPlainObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/**
 * The fields of `doc` its schema does not know, as JSON paths. The model's compiled validator reads
 * every property its schema defines (and enumerates the keys of maps such as labels or data), so it
 * runs here on a proxy that records what it reads: a key of an object that the validator never looked
 * at is a key the schema has no place for.
 */
export function unknownFields(model: ModelClass, doc: Dict): string[] {
  const seen = new WeakMap<object, Set<PropertyKey>>();
  const proxies = new WeakMap<object, object>();
  const wrap = (v: unknown): unknown => {
    if (typeof v !== 'object' || v === null) return v;
    const cached = proxies.get(v);
    if (cached) return cached;
    const keys = new Set<PropertyKey>();
    seen.set(v, keys);
    const p = new Proxy(v, {
      get: (t, k, r) => {
        keys.add(k);
        return wrap(Reflect.get(t, k, r));
      },
      has: (t, k) => {
        keys.add(k);
        return Reflect.has(t, k);
      },
      ownKeys: (t) => {
        const all = Reflect.ownKeys(t);
        for (const k of all) keys.add(k);
        return all;
      },
    });
    proxies.set(v, p);
    return p;
  };
  const copy = structuredClone(doc);
  try {
    model.prototype.validate.call(wrap(copy));
  } catch {
    // Type errors are validate()'s to report; only what was read matters here.
  }
  const out: string[] = [];
  const walk = (v: unknown, at: string): void => {
    if (Array.isArray(v)) {
      v.forEach((x, i) => walk(x, `${at}[${i}]`));
      return;
    }
    if (!isPlainObject(v)) return;
    const read = seen.get(v);
    // Never reached: below a field already reported.
    if (!read) return;
    for (const [k, child] of Object.entries(v)) {
      if (!read.has(k)) out.push(`${at}.${k}`);
      else walk(child, `${at}.${k}`);
    }
  };
  walk(copy, '$');
  return out;
}

/** Validation problems of one rendered manifest: the schema's own, and fields it does not know. */
function problems(doc: Dict): string[] {
  const key = `${doc.apiVersion}/${doc.kind}`;
  const model = MODELS[key];
  if (!model) return [`no schema for ${key}: add its kubernetes-models class to MODELS`];
  const out: string[] = [];
  try {
    new model(doc).validate();
  } catch (err) {
    out.push((err as Error).message);
  }
  for (const f of unknownFields(model, doc)) out.push(`unknown field ${f}`);
  return out;
}

const ALL_ON: Dict = { serviceMonitor: { enabled: true }, prometheusRule: { enabled: true } };
const EVERYTHING: Dict = { ...ALL_ON, grafanaDashboard: { enabled: true }, networkPolicy: { enabled: true } };
const SERVICES = [
  { name: 'auth-service', healthUrl: 'http://auth-service.lomash-wood.svc:3000/health', deployment: 'auth-service' },
  { name: 'order-payment-service', healthUrl: 'https://order-payment-service.lomash-wood.svc/health', deployment: 'order-payment-service' },
];

/** Every value set: deploy.test.ts's (its describe.each, its helm comparisons, its RBAC cases) and this file's. */
const VALUE_SETS: [string, Dict][] = [
  ['defaults', {}],
  ['serviceMonitor and prometheusRule on', ALL_ON],
  ['no persistence, names unrestricted', { ...ALL_ON, persistence: { enabled: false }, rbac: { restrictToConfiguredNames: false } }],
  [
    'variations',
    { ...ALL_ON, persistence: { enabled: false }, rbac: { restrictToConfiguredNames: false, podNames: ['p-0'] }, affinity: { nodeAffinity: {} }, env: [{ name: 'X', value: 'y' }], fullnameOverride: 'pilot' },
  ],
  ['a single replica without Kubernetes', { replicaCount: 1, config: { kubernetes: null }, podDisruptionBudget: { enabled: false } }],
  ['pods and PVCs named', { rbac: { podNames: ['postgres-replica-1'], pvcNames: ['data-postgres-primary-0'] } }],
  ['StorageClasses named, PVCs from handlers.disk-full', { rbac: { storageClassNames: ['gp3'] }, config: { handlers: { 'disk-full': { volumeClaimTemplate: 'data', pvcs: { 'postgres-replica-0': 'pg-replica-volume' } } } } }],
  ['disk-full off', { config: { handlers: { 'disk-full': { mode: 'off' } } } }],
  ['no secrets or deployments to touch', { config: { kubernetes: { secrets: [], deployments: [] } } }],
  ['an image digest', { image: { digest: 'sha256:abc' } }],
  ['the dashboard ConfigMap', { grafanaDashboard: { enabled: true } }],
  ['the dashboard ConfigMap in Grafana’s namespace, with a folder', { grafanaDashboard: { enabled: true, namespace: 'monitoring', annotations: { grafana_folder: 'Databases' } } }],
  ['the NetworkPolicy', { networkPolicy: { enabled: true } }],
  [
    'the NetworkPolicy narrowed, with services and extra rules',
    {
      config: { services: SERVICES },
      networkPolicy: {
        enabled: true,
        ingress: { from: [{ namespaceSelector: { matchLabels: { 'kubernetes.io/metadata.name': 'monitoring' } }, podSelector: { matchLabels: { 'app.kubernetes.io/name': 'prometheus' } } }] },
        egress: {
          postgres: { to: [{ podSelector: { matchLabels: { app: 'postgres' } } }] },
          kubernetesApi: { to: [{ ipBlock: { cidr: '10.0.0.1/32' } }], ports: [{ port: 6443, protocol: 'TCP' }] },
          services: { ports: [{ port: 3000, protocol: 'TCP' }, { port: 443, protocol: 'TCP' }] },
        },
        extraEgress: [{ to: [{ ipBlock: { cidr: '192.0.2.0/24', except: ['192.0.2.128/25'] } }], ports: [{ port: 8443, endPort: 8450, protocol: 'TCP' }] }],
      },
    },
  ],
  ['everything on', EVERYTHING],
  ['everything on, another release', { ...EVERYTHING, persistence: { enabled: false } }],
];

function render(values: Dict, releaseName?: string): Manifest[] {
  return renderChart(chart, { values, ...(releaseName ? { releaseName } : {}) }).manifests;
}

function only(manifests: Manifest[], kind: string, suffix = ''): K8s {
  const found = manifests.filter((m) => m.doc.kind === kind && String(m.doc.metadata?.name).endsWith(suffix));
  if (found.length !== 1) throw new Error(`expected one ${kind}${suffix ? ` named …${suffix}` : ''}, got ${found.length}`);
  return found[0]!.doc;
}

describe('every rendered manifest passes the Kubernetes API schemas, unknown fields refused', () => {
  it.each(VALUE_SETS)('%s', (_label, values) => {
    const manifests = render(values, _label === 'everything on, another release' ? 'ops' : undefined);
    expect(manifests.length).toBeGreaterThanOrEqual(4);
    const failed = manifests.map((m) => ({ object: `${m.source}: ${m.doc.kind}/${m.doc.metadata?.name}`, problems: problems(m.doc) })).filter((x) => x.problems.length > 0);
    expect(failed).toEqual([]);
  });

  it('the value sets render every template of the chart', () => {
    const sources = new Set(VALUE_SETS.flatMap(([, v]) => render(v).map((m) => m.source)));
    const templates = [...chart.templates.keys()].filter((t) => !path.posix.basename(t).startsWith('_') && !t.endsWith('NOTES.txt'));
    expect([...sources].sort()).toEqual(templates.sort());
  });
});

describe('the schema check itself', () => {
  const manifests = render(EVERYTHING);
  const misspell = (kind: string, mutate: (d: K8s) => void): string[] => {
    const doc = structuredClone(manifests.find((m) => m.doc.kind === kind)!.doc);
    mutate(doc);
    return problems(doc);
  };

  it.each<[string, string, (d: K8s) => void, string]>([
    ['a label map misspelt', 'ConfigMap', (d) => (d.metadata.labelz = d.metadata.labels), 'unknown field $.metadata.labelz'],
    ['a container field', 'StatefulSet', (d) => (d.spec.template.spec.containers[0].imagePullPolicyy = 'Always'), 'unknown field $.spec.template.spec.containers[0].imagePullPolicyy'],
    ['deep in a probe', 'StatefulSet', (d) => (d.spec.template.spec.containers[0].livenessProbe.httpGet.pth = '/x'), 'unknown field $.spec.template.spec.containers[0].livenessProbe.httpGet.pth'],
    ['a security context', 'StatefulSet', (d) => (d.spec.template.spec.securityContext.runAsNonRot = true), 'unknown field $.spec.template.spec.securityContext.runAsNonRot'],
    ['a volume claim template', 'StatefulSet', (d) => (d.spec.volumeClaimTemplates[0].spec.storageClas = 'x'), 'unknown field $.spec.volumeClaimTemplates[0].spec.storageClas'],
    ['a NetworkPolicy rule', 'NetworkPolicy', (d) => (d.spec.ingres = d.spec.ingress), 'unknown field $.spec.ingres'],
    ['a NetworkPolicy port', 'NetworkPolicy', (d) => (d.spec.egress[0].ports[0].prot = 'UDP'), 'unknown field $.spec.egress[0].ports[0].prot'],
    ['a Role rule', 'Role', (d) => (d.rules[0].verb = ['get']), 'unknown field $.rules[0].verb'],
    ['a ServiceMonitor endpoint (CRD schema)', 'ServiceMonitor', (d) => (d.spec.endpoints[0].intervall = '2s'), 'unknown field $.spec.endpoints[0].intervall'],
    ['a PrometheusRule rule (CRD schema)', 'PrometheusRule', (d) => (d.spec.groups[0].rules[0].for_ = '1m'), 'unknown field $.spec.groups[0].rules[0].for_'],
    ['a Service port', 'Service', (d) => (d.spec.ports[0].targetport = 'http'), 'unknown field $.spec.ports[0].targetport'],
  ])('finds %s', (_what, kind, mutate, expected) => {
    expect(misspell(kind, mutate)).toEqual([expected]);
  });

  it.each<[string, string, (d: K8s) => void, RegExp]>([
    ['a port that is not a number', 'StatefulSet', (d) => (d.spec.template.spec.containers[0].ports[0].containerPort = 'nine'), /containerPort must be integer/],
    ['a protocol outside the enum', 'NetworkPolicy', (d) => (d.spec.ingress[0].ports[0].protocol = 'ICMP'), /protocol/],
    ['a missing required field', 'RoleBinding', (d) => delete d.roleRef, /roleRef/],
    ['a replica count that is not a number', 'StatefulSet', (d) => (d.spec.replicas = 'two'), /replicas must be integer/],
    ['a rule list that is not a list', 'PrometheusRule', (d) => (d.spec.groups[0].rules = { alert: 'x' }), /rules must be array/],
  ])('refuses %s', (_what, kind, mutate, expected) => {
    const found = misspell(kind, mutate);
    expect(found.join('\n')).toMatch(expected);
  });

  it('has no schema for a kind it was not told about, and says so', () => {
    expect(problems({ apiVersion: 'apps/v1', kind: 'Deployment', metadata: { name: 'x' } })).toEqual(['no schema for apps/v1/Deployment: add its kubernetes-models class to MODELS']);
  });
});

describe('the dashboard ConfigMap', () => {
  it('helm/dbpilot/files/database-dashboard.json is a byte-identical copy of grafana/database-dashboard.json', () => {
    expect(readFileSync(path.join(CHART_DIR, 'files', 'database-dashboard.json')).equals(DASHBOARD)).toBe(true);
  });

  it('is off by default, and renders nothing then', () => {
    expect(chart.values.grafanaDashboard).toMatchObject({ enabled: false });
    expect(render({}).filter((m) => m.source === 'templates/grafana-dashboard.yaml')).toEqual([]);
  });

  it('holds exactly the dashboard’s bytes under a .json key, with the sidecar label grafana_dashboard: "1"', () => {
    const manifests = render({ grafanaDashboard: { enabled: true } });
    const cm = only(manifests, 'ConfigMap', '-dashboard');
    expect(cm.metadata.name).toBe('dbpilot-dashboard');
    expect(cm.metadata.namespace).toBe('lomash-wood');
    expect(cm.metadata.labels.grafana_dashboard).toBe('1');
    expect(cm.metadata.labels['app.kubernetes.io/name']).toBe('dbpilot');
    expect(Object.keys(cm.data)).toEqual(['database-dashboard.json']);
    expect(Buffer.from(cm.data['database-dashboard.json'] as string, 'utf8').equals(DASHBOARD)).toBe(true);
    // It is the dashboard the rules tests check (uid database-dashboard), and fits in a ConfigMap (1 MiB).
    expect((JSON.parse(cm.data['database-dashboard.json']) as { uid: string }).uid).toBe('database-dashboard');
    expect(Buffer.byteLength(JSON.stringify(cm))).toBeLessThan(1024 * 1024);
    // The configuration's ConfigMap is still the only other one.
    expect(manifests.filter((m) => m.doc.kind === 'ConfigMap').map((m) => m.doc.metadata.name).sort()).toEqual(['dbpilot', 'dbpilot-dashboard']);
  });

  it('goes where Grafana’s sidecar looks, with the labels and annotations it is told to use', () => {
    const cm = only(
      render({ grafanaDashboard: { enabled: true, namespace: 'monitoring', labels: { grafana_dashboard: null, 'dashboards.example/import': 'yes' }, annotations: { grafana_folder: 'Databases' } } }, 'ops'),
      'ConfigMap',
      '-dashboard',
    );
    expect(cm.metadata.name).toBe('ops-dbpilot-dashboard');
    expect(cm.metadata.namespace).toBe('monitoring');
    expect(cm.metadata.labels['dashboards.example/import']).toBe('yes');
    expect(cm.metadata.labels.grafana_dashboard).toBeUndefined();
    expect(cm.metadata.annotations).toEqual({ grafana_folder: 'Databases' });
  });
});

describe('the NetworkPolicy', () => {
  const portsOf = (rules: K8s[]): string[] => rules.flatMap((r) => (r.ports as K8s[]).map((p) => `${p.port}/${p.protocol}`));
  /** host:port → port, for the URLs of dbpilot's configuration (the scheme's default port when none). */
  const portOf = (url: string): number => {
    const u = new URL(url);
    return Number(u.port || { 'postgres:': 5432, 'postgresql:': 5432, 'redis:': 6379, 'rediss:': 6379, 'http:': 80, 'https:': 443 }[u.protocol]);
  };

  it('is off by default', () => {
    expect(chart.values.networkPolicy).toMatchObject({ enabled: false });
    expect(render({}).filter((m) => m.doc.kind === 'NetworkPolicy')).toEqual([]);
  });

  it('selects dbpilot’s pods and lets in, on the port dbpilot listens on, its own pods and the scrapers', () => {
    const manifests = render({ networkPolicy: { enabled: true } });
    const np = only(manifests, 'NetworkPolicy');
    const sts = only(manifests, 'StatefulSet');
    const podLabels = sts.spec.template.metadata.labels as Record<string, string>;
    expect(Object.entries(np.spec.podSelector.matchLabels as Record<string, string>).every(([k, v]) => podLabels[k] === v)).toBe(true);
    expect(np.spec.policyTypes).toEqual(['Ingress', 'Egress']);
    expect(np.spec.ingress).toHaveLength(1);
    const [rule] = np.spec.ingress as K8s[];
    const container = sts.spec.template.spec.containers[0];
    // The named port is the container's, which is where dbpilot listens (DBPILOT_LISTEN).
    expect(rule.ports).toEqual([{ port: 'http', protocol: 'TCP' }]);
    expect((container.ports as K8s[]).find((p) => p.name === 'http').containerPort).toBe(9630);
    // A replica that is not the leader forwards to the leader's pod: dbpilot's pods reach each other.
    expect(rule.from[0]).toEqual({ podSelector: { matchLabels: np.spec.podSelector.matchLabels } });
    expect(rule.from.slice(1)).toEqual(chart.values.networkPolicy && (chart.values.networkPolicy as K8s).ingress.from);
  });

  it('lets out DNS and every port dbpilot’s configuration connects to: PostgreSQL, Redis, the Kubernetes API, PagerDuty, the services', () => {
    for (const values of [{ networkPolicy: { enabled: true } }, VALUE_SETS.find(([l]) => l.startsWith('the NetworkPolicy narrowed'))![1]]) {
      const manifests = render(values);
      const np = only(manifests, 'NetworkPolicy');
      const config = parseYaml(only(manifests, 'ConfigMap').data['dbpilot.yaml'] as string) as K8s;
      const allowed = new Set(portsOf(np.spec.egress as K8s[]));
      expect(allowed.has('53/UDP') && allowed.has('53/TCP'), 'DNS').toBe(true);
      const urls: string[] = [
        config.postgres.primary.url,
        ...(config.postgres.replicas as K8s[]).map((r) => r.url),
        config.redis.url,
        config.pagerduty?.url ?? 'https://events.pagerduty.com/v2/enqueue',
        ...((config.services ?? []) as K8s[]).map((s) => s.healthUrl),
      ];
      for (const url of urls) expect(allowed.has(`${portOf(url)}/TCP`), `${url} is let out`).toBe(true);
      // The API server: the Service's 443 or the endpoint's own port.
      expect(allowed.has('443/TCP') || allowed.has('6443/TCP')).toBe(true);
    }
  });

  it('leaves out a rule without ports and one set to null, and keeps extra rules as given', () => {
    const np = only(
      render({ networkPolicy: { enabled: true, egress: { redis: null, services: { ports: [] } }, extraEgress: [{ ports: [{ port: 9000, protocol: 'TCP' }] }] } }),
      'NetworkPolicy',
    );
    const ports = portsOf(np.spec.egress as K8s[]);
    expect(ports).not.toContain('6379/TCP');
    expect(ports).toContain('9000/TCP');
    expect(ports).toContain('5432/TCP');
  });
});
