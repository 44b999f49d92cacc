# nhi-proxy container image.
#   docker build -t nhi-proxy .
#   docker run --read-only --tmpfs /tmp -p 8080:8080 -p 9464:9464 \
#     -v "$PWD/config.yaml:/etc/nhi-proxy/config.yaml:ro" nhi-proxy
# Runs as a numeric non-root user and writes nothing outside /tmp (audit goes to stdout), so it works
# with a read-only root filesystem. No HEALTHCHECK: Kubernetes probes /healthz and /readyz on port 9464.

# Both stages run the current Node LTS, 26, on Debian 13 (trixie), the official node images' default
# variant: the bundle is built by the Node that runs it.

# ---- build: bundle the TypeScript sources into dist/ ---------------------------------------------
FROM node:26-trixie-slim AS build
WORKDIR /app
COPY package.json package-lock.json ./
# --ignore-scripts: the package's own `prepare` would build before src/ is here (the build runs below);
# esbuild needs no install script (its binary comes from a platform package)
RUN npm ci --ignore-scripts --no-audit --no-fund
COPY tsconfig.json ./
COPY scripts/bundle.mjs ./scripts/
COPY src ./src
RUN npm run build

# ---- runtime: the bundle only, no node_modules ---------------------------------------------------
# The bundle inlines every package it uses and loads nothing but Node built-ins at run time, so the package
# has no runtime dependencies and nothing is installed here (nor package.json copied: the version is built in).
FROM node:26-trixie-slim AS runtime
ENV NODE_ENV=production \
    HOME=/tmp
WORKDIR /app
RUN mkdir -p /etc/nhi-proxy \
 && printf '# defaults only; mount the real config (e.g. a ConfigMap) over this file\n{}\n' \
      > /etc/nhi-proxy/config.yaml
COPY --from=build /app/dist ./dist
COPY config ./config
COPY schema ./schema
COPY LICENSE ./

# 65532 is the conventional "nonroot" uid/gid; numeric so runAsNonRoot can verify it
USER 65532:65532
EXPOSE 8080 8443 9464
ENTRYPOINT ["node", "dist/nhi-proxy.mjs"]
CMD ["run", "-c", "/etc/nhi-proxy/config.yaml"]
