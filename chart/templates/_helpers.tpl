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
{{ include "erlmcp.selectorLabels" . }}
app.kubernetes.io/instance: {{ .Release.Name | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/part-of: erlmcp
app.kubernetes.io/version: {{ .Values.image.tag | toString | trunc 63 | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | quote }}
{{- end -}}

{{- define "erlmcp.secretName" -}}
{{ include "erlmcp.fullname" . }}-api-keys
{{- end -}}

{{- define "erlmcp.configName" -}}
{{ include "erlmcp.fullname" . }}-config
{{- end -}}
