{{/*
Checksums that roll Pods when a secret changes, without showing the secret to whoever can read the Pod spec.

A plain hash of a secret in an annotation lets anyone allowed to read Pods test guesses of it offline (a key a user
chose falls to a word list). So each checksum is SHA-256 over a label, the installation's request-state key (48
random characters, generated on first install and kept on upgrade, or requestStateKey) and the value: it changes
when the value changes, stays the same across upgrades that keep it, and cannot be recomputed without the key, which
lives in a Secret, never in the Pod spec.
*/}}

{{/* The request-state key: requestStateKey, else the one an earlier install stored, else one generated once per
render (kept in .Values for the rest of the render, so that the Secret and every checksum of a first install agree).
*/}}
{{- define "erlmcp.requestStateKey" -}}
{{- $key := .Values.requestStateKey | default "" | toString }}
{{- if not $key }}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (include "erlmcp.stateSecretName" .) }}
{{- if and $existing $existing.data (index $existing.data "erlmcp_request_state_key") }}
{{- $key = index $existing.data "erlmcp_request_state_key" | b64dec }}
{{- else }}
{{- if not (index .Values "__erlmcpGeneratedStateKey") }}
{{- $_ := set .Values "__erlmcpGeneratedStateKey" (randAlphaNum 48) }}
{{- end }}
{{- $key = index .Values "__erlmcpGeneratedStateKey" }}
{{- end }}
{{- end }}
{{- $key }}
{{- end -}}

{{/* The checksum of a secret value: include "erlmcp.secretChecksum" (dict "root" $ "name" "api-keys" "value" $v) */}}
{{- define "erlmcp.secretChecksum" -}}
{{- printf "erlmcp/checksum/%s\n%s\n%s" .name (include "erlmcp.requestStateKey" .root) (.value | toString) | sha256sum | quote }}
{{- end -}}
