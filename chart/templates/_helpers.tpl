{{/*
Every top-level object carries app.kubernetes.io/name = the release name: the Marketplace Application
selects its components by it, and Google's deployer waits on what it selects.
*/}}
{{- define "erlmcp.fullname" -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "erlmcp.selectorLabels" -}}
app.kubernetes.io/name: {{ .Release.Name | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/component: server
{{- end -}}

{{- define "erlmcp.labels" -}}
{{ include "erlmcp.commonLabels" . }}
app.kubernetes.io/component: server
{{- end -}}

{{/* Labels without the component, for objects that are not the server (metrics Service, tester). */}}
{{- define "erlmcp.commonLabels" -}}
app.kubernetes.io/name: {{ .Release.Name | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/instance: {{ .Release.Name | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/part-of: erlmcp
app.kubernetes.io/version: {{ .Values.image.tag | toString | trunc 63 | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | quote }}
{{- end -}}

{{- define "erlmcp.secretName" -}}
{{ .Values.auth.existingSecret | default (printf "%s-api-keys" (include "erlmcp.fullname" .)) }}
{{- end -}}

{{- define "erlmcp.configName" -}}
{{ include "erlmcp.fullname" . }}-config
{{- end -}}

{{- define "erlmcp.serviceAccountName" -}}
{{- if .Values.serviceAccount.name -}}
{{ .Values.serviceAccount.name }}
{{- else if .Values.serviceAccount.create -}}
{{ include "erlmcp.fullname" . }}
{{- else -}}
default
{{- end -}}
{{- end -}}

{{- define "erlmcp.stateSecretName" -}}
{{ include "erlmcp.fullname" . }}-state
{{- end -}}

{{/* policy/v1 PodDisruptionBudget from Kubernetes 1.21, policy/v1beta1 before. */}}
{{- define "erlmcp.pdbApiVersion" -}}
{{- if semverCompare ">=1.21-0" .Capabilities.KubeVersion.Version -}}policy/v1{{- else -}}policy/v1beta1{{- end -}}
{{- end -}}

{{/* autoscaling/v2 from Kubernetes 1.23, autoscaling/v2beta2 before. */}}
{{- define "erlmcp.hpaApiVersion" -}}
{{- if semverCompare ">=1.23-0" .Capabilities.KubeVersion.Version -}}autoscaling/v2{{- else -}}autoscaling/v2beta2{{- end -}}
{{- end -}}

{{- define "erlmcp.pdbEnabled" -}}
{{- if and .Values.podDisruptionBudget.enabled (or .Values.autoscaling.enabled (ge (int .Values.replicaCount) 2)) -}}true{{- end -}}
{{- end -}}

{{/* The Secret holding the MCP listener's certificate (end-to-end TLS): the operator's, or the one the chart makes. */}}
{{- define "erlmcp.serverTlsSecretName" -}}
{{ .Values.serverTls.secretName | default (printf "%s-server-tls" (include "erlmcp.fullname" .)) }}
{{- end -}}

{{/* http or https: how the Service's MCP port, the probes and the test Pod speak to the server. */}}
{{- define "erlmcp.scheme" -}}
{{- if .Values.serverTls.enabled -}}https{{- else -}}http{{- end -}}
{{- end -}}

{{/* Where the kubelet's probes go: the MCP port (over HTTPS with serverTls), or the metrics port under mutual TLS. */}}
{{- define "erlmcp.probeTarget" -}}
{{- if .Values.serverTls.clientCaSecret -}}
port: metrics
{{- else if .Values.serverTls.enabled -}}
port: http
scheme: HTTPS
{{- else -}}
port: http
{{- end -}}
{{- end -}}

{{/* Public exposure is an explicit choice (exposure), and never plaintext or unauthenticated: refuse any values that
would put either on a public address, saying why and what to do instead. */}}
{{- define "erlmcp.checkExposure" -}}
{{- $exposure := .Values.exposure -}}
{{- if and (ne $exposure "cluster") (not .Values.auth.enabled) -}}
{{- fail (printf "exposure=%s with auth.enabled=false would let anyone on the internet call every tool: keep auth.enabled=true, or use exposure=cluster" $exposure) -}}
{{- end -}}
{{- if and (eq $exposure "loadBalancer") (not .Values.serverTls.enabled) -}}
{{- fail "exposure=loadBalancer would serve plaintext HTTP on a public address: set serverTls.enabled=true (the Pods speak HTTPS), or use exposure=ingress (HTTPS at the load balancer)" -}}
{{- end -}}
{{- if eq $exposure "ingress" -}}
{{- if eq (toString .Values.ingressAvailable) "false" -}}
{{- fail "exposure=ingress needs an ingress controller, and ingressAvailable=false says the cluster has none: use exposure=loadBalancer with serverTls.enabled=true, or exposure=cluster" -}}
{{- end -}}
{{- if .Values.serverTls.clientCaSecret -}}
{{- fail "exposure=ingress cannot be used with serverTls.clientCaSecret: the load balancer has no client certificate (use exposure=loadBalancer, a pass-through load balancer, for mutual TLS)" -}}
{{- end -}}
{{- if .Values.ingress.managedCertificate -}}
{{- if not .Values.ingress.host -}}
{{- fail "ingress.managedCertificate needs ingress.host (the name Google certifies)" -}}
{{- end -}}
{{- else if not (and .Values.tls.base64EncodedCertificate .Values.tls.base64EncodedPrivateKey) -}}
{{- fail "exposure=ingress needs a certificate, or it would serve plaintext HTTP: set ingress.managedCertificate=true with ingress.host, or tls.base64EncodedCertificate and tls.base64EncodedPrivateKey (the Marketplace form's TLS certificate)" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The Ingress serves the tls certificate (not a Google-managed one). */}}
{{- define "erlmcp.ingressUsesTlsSecret" -}}
{{- if and (eq .Values.exposure "ingress") (not .Values.ingress.managedCertificate) -}}true{{- end -}}
{{- end -}}

{{/* The API key file from Secret Manager (secretManager.enabled): through GKE's Secret Manager add-on, a CSI volume
of this SecretProviderClass; refuse values that would also give a key the chart makes or names. */}}
{{- define "erlmcp.secretManagerClass" -}}
{{ include "erlmcp.fullname" . }}-secret-manager
{{- end -}}

{{- define "erlmcp.checkSecretManager" -}}
{{- if .Values.secretManager.enabled -}}
{{- if not .Values.auth.enabled -}}
{{- fail "secretManager.enabled mounts the API key file from Secret Manager, and auth.enabled=false uses none: turn auth on, or secretManager off" -}}
{{- end -}}
{{- if not .Values.secretManager.project -}}
{{- fail "secretManager.enabled needs secretManager.project (the Google Cloud project that holds the secret)" -}}
{{- end -}}
{{- if or .Values.auth.apiKey .Values.auth.existingSecret -}}
{{- fail "secretManager.enabled takes the API key file from Secret Manager (secretManager.apiKeysSecret): leave auth.apiKey and auth.existingSecret empty" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The api-keys volume: the chart's (or the given) Secret, or the Secret Manager CSI volume. Called with a dict:
"root" (the chart's context) and, for a Pod whose fsGroup may read group-readable files, "defaultMode". */}}
{{- define "erlmcp.apiKeysVolume" -}}
{{- $root := .root -}}
- name: api-keys
{{- if $root.Values.secretManager.enabled }}
  csi:
    driver: secrets-store-gke.csi.k8s.io
    readOnly: true
    volumeAttributes:
      secretProviderClass: {{ include "erlmcp.secretManagerClass" $root }}
{{- else }}
  secret:
    secretName: {{ include "erlmcp.secretName" $root }}
    {{- with .defaultMode }}
    defaultMode: {{ . }}
    {{- end }}
{{- end }}
{{- end -}}

{{/* Where sessions live (sessions.store): refuse a store that cannot work with these values, saying the way out. */}}
{{- define "erlmcp.checkSessions" -}}
{{- $store := .Values.sessions.store -}}
{{- $external := .Values.sessions.external -}}
{{- if and (eq $store "pod") (or .Values.autoscaling.enabled (gt (int .Values.replicaCount) 1)) -}}
{{- $why := ternary "autoscaling.enabled=true" (printf "replicaCount=%v" .Values.replicaCount) (eq (toString .Values.autoscaling.enabled) "true") -}}
{{- fail (printf "sessions.store=pod keeps each session in one Pod's memory, so with %s a client's next request reaches another Pod and gets 404 Session not found: set sessions.store=redis (a Redis this chart runs), sessions.store=external (your Redis, e.g. Memorystore) or sessions.store=stateless (2026-07-28 clients only), or run one replica" $why) -}}
{{- end -}}
{{- if eq $store "external" -}}
{{- if not (or $external.secretName $external.url) -}}
{{- fail "sessions.store=external needs sessions.external.secretName (a Secret of yours with key redis-url) or sessions.external.url" -}}
{{- end -}}
{{- if and $external.secretName $external.url -}}
{{- fail "sessions.external: give secretName or url, not both" -}}
{{- end -}}
{{- if and $external.caCert (not $external.secretName) -}}
{{- fail "sessions.external.caCert needs sessions.external.secretName (the Secret that holds ca.crt)" -}}
{{- end -}}
{{- else if or $external.secretName $external.url $external.caCert -}}
{{- fail (printf "sessions.external is used only with sessions.store=external (sessions.store is %s)" $store) -}}
{{- end -}}
{{- end -}}

{{/* The Redis of sessions.store=redis: its objects' name and its Pods' labels. */}}
{{- define "erlmcp.redisName" -}}
{{ include "erlmcp.fullname" . | trunc 57 | trimSuffix "-" }}-redis
{{- end -}}

{{/* The test Pod (helm test, Marketplace's tester), as the NetworkPolicies select it. */}}
{{- define "erlmcp.testerSelectorLabels" -}}
app.kubernetes.io/name: {{ .Release.Name | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/component: tester
{{- end -}}

{{- define "erlmcp.redisSelectorLabels" -}}
app.kubernetes.io/name: {{ .Release.Name | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/component: redis
{{- end -}}

{{/* redis.conf of sessions.store=redis (also what the tests run redis-server with). */}}
{{- define "erlmcp.redisConfig" -}}
port 6379
bind * -::*
requirepass {{ .password }}
# Sessions and event streams expire by themselves: nothing is written to disk, so Redis never forks (a fork for a
# snapshot or a rewrite could double its memory under the container's limit).
save ""
appendonly no
dir /data
maxmemory {{ .maxMemory }}
maxmemory-policy volatile-lru
# Logs to stdout, for Cloud Logging.
logfile ""
{{- end -}}

{{/* Usage-based billing needs the listing's reporting secret and service name. */}}
{{- define "erlmcp.checkMetering" -}}
{{- if .Values.metering.enabled -}}
{{- if not .Values.metering.reportingSecret -}}
{{- fail "metering.enabled needs metering.reportingSecret (Marketplace's REPORTING_SECRET: the Secret with consumer-id and reporting-key)" -}}
{{- end -}}
{{- if not .Values.metering.serviceName -}}
{{- fail "metering.enabled needs metering.serviceName (the listing's Service Control service name, given at onboarding)" -}}
{{- end -}}
{{- end -}}
{{- end -}}
