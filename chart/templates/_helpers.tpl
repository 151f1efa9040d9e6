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
{{- if include "erlmcp.mutualTls" . -}}
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
{{- if include "erlmcp.mutualTls" . -}}
{{- fail "exposure=ingress cannot be used with serverTls.clientCaSecret (or tls-client-ca in secretManager.keys): the load balancer has no client certificate (use exposure=loadBalancer, a pass-through load balancer, for mutual TLS)" -}}
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

{{/* Secret Manager (secretManager.enabled): the server's files from Secret Manager secrets, through GKE's Secret
Manager add-on, a CSI volume of this SecretProviderClass mounted at /etc/erlmcp/secrets; the test Pod's own class when
the server's holds more than the test Pod uses. */}}
{{- define "erlmcp.secretManagerClass" -}}
{{ include "erlmcp.fullname" . }}-secret-manager
{{- end -}}

{{- define "erlmcp.secretManagerTestClass" -}}
{{ include "erlmcp.fullname" . | trunc 58 | trimSuffix "-" }}-secret-manager-test
{{- end -}}

{{/* Where each key's file lands in /etc/erlmcp/secrets (redis-url under the name the server reads from its secrets
folders, ERLMCP_SECRETS_DIR). */}}
{{- define "erlmcp.secretManagerFiles" -}}
api-keys: api-keys
redis-url: erlmcp_redis_url
redis-ca: redis-ca.crt
tls-cert: tls.crt
tls-key: tls.key
tls-client-ca: client-ca.crt
jwt-public-key: jwt-public-key.pem
otel-ca-cert: otel-ca.crt
{{- end -}}

{{/* "true" when the file of this key comes from Secret Manager. Called with a dict: "root" and "key". */}}
{{- define "erlmcp.fromSecretManager" -}}
{{- if and .root.Values.secretManager.enabled (has .key .root.Values.secretManager.keys) -}}true{{- end -}}
{{- end -}}

{{/* The secret version a key's file is: projects/P/secrets/NAME/versions/V. Called with a dict: "root" and "key". */}}
{{- define "erlmcp.secretManagerResource" -}}
{{- $sm := .root.Values.secretManager -}}
{{- $name := index $sm.names .key | default (ternary $sm.apiKeysSecret "" (eq .key "api-keys")) | default (printf "%s-%s" $sm.prefix .key) -}}
{{- printf "projects/%s/secrets/%s/versions/%s" $sm.project $name (toString $sm.version) -}}
{{- end -}}

{{/* The parameters.secrets of a SecretProviderClass: each of "keys" as the file "paths" gives it (default: its file
in erlmcp.secretManagerFiles). Called with a dict: "root", "keys" and "paths". */}}
{{- define "erlmcp.secretManagerSecrets" -}}
{{- $files := include "erlmcp.secretManagerFiles" .root | fromYaml -}}
{{- range .keys }}
- resourceName: {{ include "erlmcp.secretManagerResource" (dict "root" $.root "key" .) | quote }}
  path: {{ index $.paths . | default (index $files .) }}
{{- end }}
{{- end -}}

{{/* What the test Pod takes from Secret Manager: the API key file, and the certificate the server presents (which it
trusts) when that comes from Secret Manager too. */}}
{{- define "erlmcp.secretManagerTestKeys" -}}
{{- $keys := list "api-keys" -}}
{{- if include "erlmcp.fromSecretManager" (dict "root" . "key" "tls-cert") -}}
{{- $keys = append $keys "tls-cert" -}}
{{- end -}}
{{- toJson $keys -}}
{{- end -}}

{{/* Mutual TLS: the client CA from a Secret (serverTls.clientCaSecret) or from Secret Manager (tls-client-ca). */}}
{{- define "erlmcp.mutualTls" -}}
{{- if or .Values.serverTls.clientCaSecret (include "erlmcp.fromSecretManager" (dict "root" . "key" "tls-client-ca")) -}}true{{- end -}}
{{- end -}}

{{- define "erlmcp.checkSecretManager" -}}
{{- $sm := .Values.secretManager -}}
{{- if $sm.enabled -}}
{{- $has := dict -}}
{{- range $sm.keys -}}
{{- $_ := set $has . true -}}
{{- end -}}
{{- if not .Values.auth.enabled -}}
{{- fail "secretManager.enabled mounts the API key file from Secret Manager, and auth.enabled=false uses none: turn auth on, or secretManager off" -}}
{{- end -}}
{{- if not $sm.project -}}
{{- fail "secretManager.enabled needs secretManager.project (the Google Cloud project that holds the secret)" -}}
{{- end -}}
{{- if not (index $has "api-keys") -}}
{{- fail "secretManager.keys must include api-keys: with secretManager.enabled the API key file comes from Secret Manager" -}}
{{- end -}}
{{- if or .Values.auth.apiKey .Values.auth.existingSecret -}}
{{- fail "secretManager.enabled takes the API key file from Secret Manager (secretManager.apiKeysSecret): leave auth.apiKey and auth.existingSecret empty" -}}
{{- end -}}
{{- if and $sm.apiKeysSecret (index $sm.names "api-keys") -}}
{{- fail "give secretManager.names.api-keys or secretManager.apiKeysSecret, not both (they name the same secret)" -}}
{{- end -}}
{{- if index $has "redis-url" -}}
{{- if ne .Values.sessions.store "external" -}}
{{- fail (printf "secretManager.keys has redis-url, the URL of your Redis: redis-url needs sessions.store=external (sessions.store is %s)" .Values.sessions.store) -}}
{{- end -}}
{{- end -}}
{{- if index $has "redis-ca" -}}
{{- if ne .Values.sessions.store "external" -}}
{{- fail (printf "secretManager.keys has redis-ca, the CA of your Redis's TLS certificate: redis-ca needs sessions.store=external (sessions.store is %s)" .Values.sessions.store) -}}
{{- end -}}
{{- if not (index $has "redis-url") -}}
{{- fail "secretManager.keys: redis-ca needs redis-url in secretManager.keys too (with the URL from sessions.external.secretName, its CA is sessions.external.caCert, from the same Secret)" -}}
{{- end -}}
{{- if .Values.sessions.external.caCert -}}
{{- fail "give sessions.external.caCert or redis-ca in secretManager.keys, not both (both are the Redis CA)" -}}
{{- end -}}
{{- end -}}
{{- if or (index $has "tls-cert") (index $has "tls-key") -}}
{{- if not (and (index $has "tls-cert") (index $has "tls-key")) -}}
{{- fail "secretManager.keys: tls-cert and tls-key go together (the MCP listener's certificate and its private key)" -}}
{{- end -}}
{{- if not .Values.serverTls.enabled -}}
{{- fail "secretManager.keys: tls-cert and tls-key need serverTls.enabled=true (they are the MCP listener's certificate)" -}}
{{- end -}}
{{- if .Values.serverTls.secretName -}}
{{- fail "secretManager.keys has tls-cert and tls-key, the MCP listener's certificate: leave serverTls.secretName empty" -}}
{{- end -}}
{{- end -}}
{{- if index $has "tls-client-ca" -}}
{{- if not .Values.serverTls.enabled -}}
{{- fail "secretManager.keys: tls-client-ca needs serverTls.enabled=true (mutual TLS is TLS first)" -}}
{{- end -}}
{{- if .Values.serverTls.clientCaSecret -}}
{{- fail "give serverTls.clientCaSecret or tls-client-ca in secretManager.keys, not both (both are the client CA)" -}}
{{- end -}}
{{- end -}}
{{- if index $has "jwt-public-key" -}}
{{- if .Values.jwt.jwksUrl -}}
{{- fail "give jwt.jwksUrl or jwt-public-key in secretManager.keys, not both (the server takes one way to check tokens)" -}}
{{- end -}}
{{- end -}}
{{- if index $has "otel-ca-cert" -}}
{{- if not (hasPrefix "https://" (.Values.tracing.otlpEndpoint | default "")) -}}
{{- fail (printf "secretManager.keys: otel-ca-cert needs an https:// tracing.otlpEndpoint (it is the CA of that collector's certificate; tracing.otlpEndpoint is %q)" (.Values.tracing.otlpEndpoint | default "")) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The api-keys volume: the chart's (or the given) Secret, or the Secret Manager CSI volume (of "class", default the
server's SecretProviderClass). Called with a dict: "root" (the chart's context) and, for a Pod whose fsGroup may read
group-readable files, "defaultMode". */}}
{{- define "erlmcp.apiKeysVolume" -}}
{{- $root := .root -}}
- name: api-keys
{{- if $root.Values.secretManager.enabled }}
  csi:
    driver: secrets-store-gke.csi.k8s.io
    readOnly: true
    volumeAttributes:
      secretProviderClass: {{ .class | default (include "erlmcp.secretManagerClass" $root) }}
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
{{- if include "erlmcp.fromSecretManager" (dict "root" . "key" "redis-url") -}}
{{- if or $external.secretName $external.url -}}
{{- fail "secretManager.keys has redis-url, the URL of your Redis from Secret Manager: leave sessions.external.secretName and sessions.external.url empty" -}}
{{- end -}}
{{- else if not (or $external.secretName $external.url) -}}
{{- fail "sessions.store=external needs sessions.external.secretName (a Secret of yours with key redis-url) or sessions.external.url, or redis-url in secretManager.keys (with secretManager.enabled)" -}}
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
