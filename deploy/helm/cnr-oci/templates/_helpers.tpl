{{- define "cnr-oci.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "cnr-oci.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 57 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 57 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "cnr-oci.selectorLabels" -}}
app.kubernetes.io/name: {{ include "cnr-oci.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "cnr-oci.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "cnr-oci.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* The registry cnr-oci stores into: upstream.url, else the chart's own. */}}
{{- define "cnr-oci.upstream" -}}
{{- if .Values.upstream.url -}}
{{- .Values.upstream.url -}}
{{- else if .Values.registry.enabled -}}
{{- printf "http://%s-registry:5000" (include "cnr-oci.fullname" .) -}}
{{- else -}}
{{- fail "set upstream.url (your OCI registry), or registry.enabled=true for the chart's own" -}}
{{- end -}}
{{- end -}}

{{- define "cnr-oci.tokenSecretName" -}}
{{- .Values.tokenSecret.existingSecret | default (printf "%s-token" (include "cnr-oci.fullname" .)) -}}
{{- end -}}

{{- define "cnr-oci.credentialsSecretName" -}}
{{- .Values.upstream.credentials.existingSecret | default (printf "%s-registry-credentials" (include "cnr-oci.fullname" .)) -}}
{{- end -}}

{{- define "cnr-oci.hasCredentials" -}}
{{- if or .Values.upstream.credentials.existingSecret .Values.upstream.credentials.username -}}true{{- end -}}
{{- end -}}
