{{/* Chart name, truncated to the 63 characters a DNS label allows. */}}
{{- define "nhi-proxy.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "nhi-proxy.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* The metrics Service: a Service name is a 63-character DNS label, so the suffix needs room of its own. */}}
{{- define "nhi-proxy.metricsServiceName" -}}
{{- printf "%s-metrics" (include "nhi-proxy.fullname" . | trunc 55 | trimSuffix "-") }}
{{- end }}

{{- define "nhi-proxy.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "nhi-proxy.selectorLabels" -}}
app.kubernetes.io/name: {{ include "nhi-proxy.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "nhi-proxy.labels" -}}
helm.sh/chart: {{ include "nhi-proxy.chart" . }}
{{ include "nhi-proxy.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "nhi-proxy.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "nhi-proxy.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Non-empty when the config asks for the mTLS listener (config.listen.https). */}}
{{- define "nhi-proxy.httpsEnabled" -}}
{{- $listen := (.Values.config | default dict).listen | default dict }}
{{- if hasKey $listen "https" }}true{{ end }}
{{- end }}

{{- define "nhi-proxy.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The `service` label of every metric. */}}
{{- define "nhi-proxy.serviceName" -}}
{{- if .Values.serviceName }}{{ .Values.serviceName }}
{{- else if eq .Values.mode "sidecar" }}{{ .Values.app.name }}
{{- else }}{{ include "nhi-proxy.fullname" . }}
{{- end }}
{{- end }}

{{- define "nhi-proxy.upstream" -}}
{{- if eq .Values.mode "sidecar" }}
{{- printf "%s://127.0.0.1:%d" (.Values.app.protocol | default "http") (int .Values.app.port) }}
{{- else }}
{{- required "upstream is required in deployment mode (e.g. http://my-app.my-ns.svc:80)" .Values.upstream }}
{{- end }}
{{- end }}

{{/*
The config.yaml nhi-proxy reads: the `config` values with service, listeners, admin and upstream filled in
from the chart values, so ports in the config always match the container and Service ports.
*/}}
{{- define "nhi-proxy.effectiveConfig" -}}
{{- $cfg := deepCopy (.Values.config | default dict) }}
{{- $listen := dict }}
{{- if hasKey $cfg "listen" }}{{ $listen = deepCopy (get $cfg "listen") }}{{ end }}
{{- $bind := .Values.bindAddress | default "0.0.0.0" }}
{{- if contains ":" $bind }}{{ $bind = printf "[%s]" $bind }}{{ end }}
{{- $_ := set $listen "http" (printf "%s:%d" $bind (int .Values.ports.http)) }}
{{- if hasKey $listen "https" }}
{{- $_ := set (get $listen "https") "address" (printf "%s:%d" $bind (int .Values.ports.https)) }}
{{- end }}
{{- $_ := set $cfg "listen" $listen }}
{{- $_ := set $cfg "admin" (printf "%s:%d" $bind (int .Values.ports.admin)) }}
{{- $_ := set $cfg "upstream" (include "nhi-proxy.upstream" .) }}
{{- if .Values.adminToken.existingSecret }}
{{- $access := dict }}
{{- if hasKey $cfg "adminAccess" }}{{ $access = deepCopy (get $cfg "adminAccess") }}{{ end }}
{{- $_ := set $access "tokenFile" (printf "/etc/nhi-proxy-admin/%s" .Values.adminToken.key) }}
{{- $_ := set $cfg "adminAccess" $access }}
{{- end }}
{{- if not (hasKey $cfg "service") }}{{ $_ := set $cfg "service" (include "nhi-proxy.serviceName" .) }}{{ end }}
{{- /* An issuer without audiences would accept tokens minted for any other service (or the API server):
       it accepts tokens for this service's name only, unless it lists its audiences or says `any`. */}}
{{- if hasKey $cfg "jwt" }}
{{- range (get (get $cfg "jwt") "issuers" | default list) }}
{{- if not (hasKey . "audiences") }}{{ $_ := set . "audiences" (list (get $cfg "service")) }}{{ end }}
{{- end }}
{{- end }}
{{- toYaml $cfg }}
{{- end }}

{{/*
Checksum for the pod template. Hot reload applies everything except what is bound when the process starts
(docs/reference.md "Config file": listeners, admin, upstreamTls, timeouts, limits, workers, audit.output,
metrics.buckets; upstream too), so only those roll the pods unless rollOnAnyConfigChange: a change to any
of them would otherwise sit in the ConfigMap while the pods kept the old value.
*/}}
{{- define "nhi-proxy.configChecksum" -}}
{{- $cfg := include "nhi-proxy.effectiveConfig" . | fromYaml }}
{{- if .Values.rollOnAnyConfigChange }}
{{- toYaml $cfg | sha256sum }}
{{- else }}
{{- $startOnly := pick $cfg "listen" "admin" "upstream" "upstreamTls" "limits" "timeouts" "workers" }}
{{- with $cfg.audit }}{{ $_ := set $startOnly "audit" (pick . "output") }}{{ end }}
{{- with $cfg.metrics }}{{ $_ := set $startOnly "metrics" (pick . "buckets") }}{{ end }}
{{- $startOnly | toYaml | sha256sum }}
{{- end }}
{{- end }}

{{/* Seconds of a config duration ("500ms", "15s", "1m", "1h", "1d", or a bare number of seconds), as the proxy reads it. */}}
{{- define "nhi-proxy.seconds" -}}
{{- if kindIs "string" . }}
{{- $n := regexFind "^[0-9]+(\\.[0-9]+)?" . | default "0" | float64 }}
{{- $unit := trimPrefix (regexFind "^[0-9]+(\\.[0-9]+)?" .) . }}
{{- $scale := get (dict "ms" 0.001 "s" 1.0 "m" 60.0 "h" 3600.0 "d" 86400.0) $unit | default 1.0 }}
{{- mulf $n $scale }}
{{- else }}
{{- float64 . }}
{{- end }}
{{- end }}

{{/*
Refuses a terminationGracePeriodSeconds shorter than the stop the pod asks for: the preStop sleeps that run
first (the app's in sidecar mode, which stops before its native sidecar, and the proxy's own), then the
proxy's timeouts.drainDelay and timeouts.drain. The kubelet kills what still runs when the period ends.
*/}}
{{- define "nhi-proxy.checkGracePeriod" -}}
{{- $timeouts := (.Values.config | default dict).timeouts | default dict }}
{{- /* hasKey, not default: a 0 (no drain delay, no drain) is a value the proxy takes, not one left unset */}}
{{- $drainDelay := get $timeouts "drainDelay" }}
{{- if or (not (hasKey $timeouts "drainDelay")) (kindIs "invalid" $drainDelay) }}{{ $drainDelay = "5s" }}{{ end }}
{{- $drain := get $timeouts "drain" }}
{{- if or (not (hasKey $timeouts "drain")) (kindIs "invalid" $drain) }}{{ $drain = "15s" }}{{ end }}
{{- $need := addf (include "nhi-proxy.seconds" $drainDelay) (include "nhi-proxy.seconds" $drain) }}
{{- if include "nhi-proxy.sleepAction" . }}
{{- $need = addf $need (.Values.preStopSleepSeconds | default 0) }}
{{- if eq .Values.mode "sidecar" }}{{ $need = addf $need (.Values.app.preStopSleepSeconds | default 0) }}{{ end }}
{{- end }}
{{- if lt (float64 .Values.terminationGracePeriodSeconds) (float64 $need) }}
{{- fail (printf "terminationGracePeriodSeconds (%v) is shorter than the stop it must cover: %v s of preStop sleep, timeouts.drainDelay and timeouts.drain; raise it to at least %v" .Values.terminationGracePeriodSeconds $need (ceil $need)) }}
{{- end }}
{{- end }}

{{/* The nhi-proxy container, without restartPolicy (see nhi-proxy.sidecar). */}}
{{/*
"true" where the cluster takes a preStop `sleep` action (Kubernetes 1.30 and later). On 1.29 the API server
drops the field (feature gate off) and then refuses the pod for a preStop hook without a handler: there the
chart renders no preStop at all (NOTES says so).
*/}}
{{- define "nhi-proxy.sleepAction" -}}
{{- if semverCompare ">=1.30.0-0" .Capabilities.KubeVersion.Version }}true{{ end }}
{{- end }}

{{- define "nhi-proxy.container" -}}
name: nhi-proxy
image: {{ include "nhi-proxy.image" . | quote }}
imagePullPolicy: {{ .Values.image.pullPolicy }}
args: [run, -c, /etc/nhi-proxy/config.yaml]
{{- with .Values.extraEnv }}
env:
  {{- toYaml . | nindent 2 }}
{{- end }}
ports:
  - name: nhi-http
    containerPort: {{ .Values.ports.http }}
    protocol: TCP
  {{- if include "nhi-proxy.httpsEnabled" . }}
  - name: nhi-https
    containerPort: {{ .Values.ports.https }}
    protocol: TCP
  {{- end }}
  - name: nhi-admin
    containerPort: {{ .Values.ports.admin }}
    protocol: TCP
{{- with .Values.probes }}
startupProbe:
  httpGet: { path: {{ .startup.path }}, port: nhi-admin }
  periodSeconds: {{ .startup.periodSeconds }}
  timeoutSeconds: {{ .startup.timeoutSeconds }}
  failureThreshold: {{ .startup.failureThreshold }}
livenessProbe:
  httpGet: { path: {{ .liveness.path }}, port: nhi-admin }
  periodSeconds: {{ .liveness.periodSeconds }}
  timeoutSeconds: {{ .liveness.timeoutSeconds }}
  failureThreshold: {{ .liveness.failureThreshold }}
readinessProbe:
  httpGet: { path: {{ .readiness.path }}, port: nhi-admin }
  periodSeconds: {{ .readiness.periodSeconds }}
  timeoutSeconds: {{ .readiness.timeoutSeconds }}
  failureThreshold: {{ .readiness.failureThreshold }}
{{- end }}
{{- if and .Values.preStopSleepSeconds (include "nhi-proxy.sleepAction" .) }}
lifecycle:
  preStop:
    sleep: { seconds: {{ .Values.preStopSleepSeconds }} }
{{- end }}
resources:
  {{- toYaml .Values.resources | nindent 2 }}
securityContext:
  {{- toYaml .Values.securityContext | nindent 2 }}
volumeMounts:
  - name: nhi-proxy-config
    mountPath: /etc/nhi-proxy
    readOnly: true
  - name: nhi-proxy-tmp
    mountPath: /tmp
  {{- if .Values.kubeApiAccess.enabled }}
  - name: nhi-proxy-kube-api
    mountPath: /var/run/secrets/kubernetes.io/serviceaccount
    readOnly: true
  {{- end }}
  {{- if .Values.adminToken.existingSecret }}
  - name: nhi-proxy-admin-token
    mountPath: /etc/nhi-proxy-admin
    readOnly: true
  {{- end }}
  {{- with .Values.extraVolumeMounts }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end }}

{{/*
nhi-proxy as a native sidecar: one list item for a pod's initContainers (Kubernetes >= 1.29). It starts
before the app, is "started" once /healthz answers (startupProbe), and stops after the app.
Usage in a pod spec:   initContainers:
                         {{- include "nhi-proxy.sidecar" . | nindent 8 }}
together with "nhi-proxy.sidecarVolumes" under volumes.
*/}}
{{- define "nhi-proxy.sidecar" -}}
- restartPolicy: Always
  {{- include "nhi-proxy.container" . | nindent 2 }}
{{- end }}

{{/* Volumes the nhi-proxy container mounts: list items for a pod's volumes. */}}
{{- define "nhi-proxy.sidecarVolumes" -}}
- name: nhi-proxy-config
  configMap:
    name: {{ include "nhi-proxy.fullname" . }}
- name: nhi-proxy-tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpSizeLimit }}
{{- if .Values.kubeApiAccess.enabled }}
- name: nhi-proxy-kube-api
  projected:
    defaultMode: {{ .Values.kubeApiAccess.defaultMode }}
    sources:
      - serviceAccountToken:
          path: token
          expirationSeconds: {{ .Values.kubeApiAccess.expirationSeconds }}
          {{- with .Values.kubeApiAccess.audience }}
          audience: {{ . | quote }}
          {{- end }}
      - configMap:
          name: kube-root-ca.crt
          items:
            - { key: ca.crt, path: ca.crt }
      - downwardAPI:
          items:
            - path: namespace
              fieldRef: { fieldPath: metadata.namespace }
{{- end }}
{{- if .Values.adminToken.existingSecret }}
- name: nhi-proxy-admin-token
  secret:
    secretName: {{ .Values.adminToken.existingSecret }}
    # readable by the proxy's non-root user in any pod: the files are root:root unless the pod sets an
    # fsGroup, which a sidecar's pod (the app's) need not; only the proxy container mounts this volume
    defaultMode: 0444
    items:
      - { key: {{ .Values.adminToken.key }}, path: {{ .Values.adminToken.key }} }
{{- end }}
{{- with .Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end }}
