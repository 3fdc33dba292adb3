# syntax=docker/dockerfile:1
#
# dbpilot image: `docker build -t dbpilot .`
#
# Two stages. `build` installs every dependency (better-sqlite3 compiles its native addon here when no
# prebuilt binary matches), compiles src/ to dist/ and prunes the dev dependencies. `runtime` gets
# only what runs: node_modules, dist/, bin/, package.json and the two alerts/ files the drill reads. src/ is NOT copied, so bin/dbpilot.js
# takes its dist/ branch (it runs the TypeScript sources through tsx only when src/cli.ts exists).
# Both stages use the same Debian release, so the addon built against bookworm's glibc loads at run time.
# The Node major version matches package.json's "engines" (test/deploy/deploy.test.ts checks it).

ARG NODE_IMAGE=node:20-bookworm-slim

FROM ${NODE_IMAGE} AS build
# python3, make and g++: node-gyp's toolchain for better-sqlite3.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 make g++ \
 && rm -rf /var/lib/apt/lists/*
# node-gyp uses the headers shipped in the image instead of downloading them.
ENV npm_config_nodedir=/usr/local
WORKDIR /app
# Dependencies first, so a source change does not reinstall them.
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
RUN npm run build \
 && npm prune --omit=dev --no-audit --no-fund

FROM ${NODE_IMAGE} AS runtime
# Inside a container 127.0.0.1 (the configuration default) is unreachable from outside, and ./data
# is not writable; these two override `listen` and `store.path` of any configuration file (pass -e
# to change them).
ENV NODE_ENV=production \
    DBPILOT_LISTEN=0.0.0.0:9630 \
    DBPILOT_STORE_PATH=/var/lib/dbpilot/dbpilot.sqlite
WORKDIR /app
# A fixed, numeric, non-root uid/gid (10001) so Kubernetes' runAsNonRoot can verify it and the Helm
# chart's fsGroup makes the store volume writable. /var/lib/dbpilot is the only directory it owns:
# the application files stay root-owned and read-only to it. `dbpilot` on PATH runs the CLI
# (`kubectl exec … -- dbpilot audit`).
RUN groupadd --system --gid 10001 dbpilot \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/dbpilot --no-create-home --shell /usr/sbin/nologin dbpilot \
 && mkdir -p /var/lib/dbpilot \
 && chown 10001:10001 /var/lib/dbpilot \
 && chmod 0750 /var/lib/dbpilot \
 && ln -s /app/bin/dbpilot.js /usr/local/bin/dbpilot
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY bin ./bin
COPY package.json ./
# `dbpilot drill --with-prometheus` (src/drill/alert-path.ts) loads the rules into Prometheus and points
# the Alertmanager example at its sandbox; both read from the package root.
COPY alerts/dbpilot.rules.yml alerts/alertmanager.example.yml ./alerts/
USER 10001:10001
# The SQLite audit store, escalation outbox and run state: keep it on a volume, or pending pages
# and runs in flight are lost with the container.
VOLUME ["/var/lib/dbpilot"]
EXPOSE 9630
# No curl in the slim image: Node's fetch asks the liveness route on the port DBPILOT_LISTEN names.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD ["node", "-e", "const l=process.env.DBPILOT_LISTEN||'127.0.0.1:9630';fetch('http://127.0.0.1:'+l.slice(l.lastIndexOf(':')+1)+'/-/healthy',{signal:AbortSignal.timeout(4000)}).then((r)=>process.exit(r.ok?0:1),()=>process.exit(1))"]
# V8 sized for a small, long-running service (bench/README.md, "Memory"): 1 MiB semi-spaces instead of
# 16, and --optimize-for-size (a slower-growing old generation). `npm run bench` runs the compiled
# build with exactly the flags of this line.
ENTRYPOINT ["node", "--optimize-for-size", "--max-semi-space-size=1", "bin/dbpilot.js"]
CMD ["serve"]
