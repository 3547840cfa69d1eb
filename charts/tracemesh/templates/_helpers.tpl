{{/* Chart name, truncated to the 63 characters of a DNS label. */}}
{{- define "tracemesh.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified name: the release name, with the chart name unless already in it. */}}
{{- define "tracemesh.fullname" -}}
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

{{- define "tracemesh.webhookName" -}}
{{- printf "%s-webhook" (include "tracemesh.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "tracemesh.tlsSecretName" -}}
{{- printf "%s-webhook-tls" (include "tracemesh.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "tracemesh.configName" -}}
{{- printf "%s-proxy-config" (include "tracemesh.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "tracemesh.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tracemesh.webhookName" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "tracemesh.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "tracemesh.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "tracemesh.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tracemesh
{{- end }}

{{- define "tracemesh.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tracemesh.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: webhook
{{- end }}

{{/* The webhook Service's DNS names: what the serving certificate must cover. */}}
{{- define "tracemesh.webhookDNSNames" -}}
{{- $svc := include "tracemesh.webhookName" . }}
{{- $ns := .Release.Namespace }}
{{- list $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns) (printf "%s.%s.svc.cluster.local" $svc $ns) | toJson }}
{{- end }}

{{/*
Where the webhook's serving certificate comes from: "chart" (generated at install time, the
default), "certManager" (webhook.certManager.enabled) or "webhook" (webhook.issueOwnCertificate:
the webhook writes its own into the Secret and sets caBundle). Every template that depends on it
asks here, so the two options are checked for conflict in one place.
*/}}
{{- define "tracemesh.certSource" -}}
{{- if and .Values.webhook.certManager.enabled .Values.webhook.issueOwnCertificate }}
{{- fail "webhook.certManager.enabled and webhook.issueOwnCertificate are mutually exclusive: set at most one (neither: the chart generates the certificate at install time)" }}
{{- else if .Values.webhook.certManager.enabled }}
{{- print "certManager" }}
{{- else if .Values.webhook.issueOwnCertificate }}
{{- print "webhook" }}
{{- else }}
{{- print "chart" }}
{{- end }}
{{- end }}
