{{/* Chart name, overridable with nameOverride. */}}
{{- define "kubetune.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name: the release name, plus the chart name unless the release name already contains it.
Truncated to 54 characters so that "<fullname>-operator" and similar suffixes stay within 63.
*/}}
{{- define "kubetune.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 54 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 54 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 54 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Name of the operator's Deployment and metrics Service ("kubetune-operator" is what the alert rules match). */}}
{{- define "kubetune.operatorName" -}}
{{- printf "%s-operator" (include "kubetune.fullname" .) }}
{{- end }}

{{/* Chart name and version, for the helm.sh/chart label. */}}
{{- define "kubetune.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels (immutable: never add the version here). */}}
{{- define "kubetune.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kubetune.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Common labels; every object also gets app.kubernetes.io/component. */}}
{{- define "kubetune.labels" -}}
helm.sh/chart: {{ include "kubetune.chart" . }}
{{ include "kubetune.selectorLabels" . }}
app.kubernetes.io/version: {{ include "kubetune.appVersion" . | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kubetune
{{- end }}

{{/* The app version as a label-safe string. */}}
{{- define "kubetune.appVersion" -}}
{{- .Values.image.tag | default .Chart.AppVersion | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of the operator's Deployment, pods and Service. */}}
{{- define "kubetune.operatorLabels" -}}
{{ include "kubetune.labels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{/* Selector of the operator's pods. */}}
{{- define "kubetune.operatorSelectorLabels" -}}
{{ include "kubetune.selectorLabels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{/* The operator's ServiceAccount. */}}
{{- define "kubetune.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kubetune.operatorName" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The operator image, repository:tag (tag defaults to the chart's appVersion). */}}
{{- define "kubetune.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/* The default trainer image (tag defaults to the chart's appVersion). */}}
{{- define "kubetune.trainerImage" -}}
{{- printf "%s:%s" .Values.operator.trainerImage.repository (.Values.operator.trainerImage.tag | default .Chart.AppVersion) }}
{{- end }}

{{/* True when the operator watches only the release namespace. */}}
{{- define "kubetune.namespaced" -}}
{{- if eq .Values.rbac.scope "Namespaced" }}true{{ end }}
{{- end }}

{{/* The restricted container securityContext (Pod Security Standard "restricted"). */}}
{{- define "kubetune.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* The restricted pod securityContext. */}}
{{- define "kubetune.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Name of the OpenAI-compatible API server's Deployment, Service, ServiceAccount and Roles. */}}
{{- define "kubetune.apiName" -}}
{{- printf "%s-api" (include "kubetune.fullname" .) }}
{{- end }}

{{/* Labels of the API server's objects. */}}
{{- define "kubetune.apiLabels" -}}
{{ include "kubetune.labels" . }}
app.kubernetes.io/component: api
{{- end }}

{{/* Selector of the API server's pods. */}}
{{- define "kubetune.apiSelectorLabels" -}}
{{ include "kubetune.selectorLabels" . }}
app.kubernetes.io/component: api
{{- end }}

{{/*
Checks of the API values that the schema cannot express; rendered (as nothing) by every API template.
A namespaced operator reconciles only its own namespace: a tenant elsewhere would get FineTuneJobs nobody runs.
*/}}
{{- define "kubetune.apiValidate" -}}
{{- if not .Values.api.tokensSecret }}
{{- fail "api.tokensSecret is required when api.enabled is true: the name of an existing Secret with the bearer tokens (JSON {\"<token>\": \"<namespace>\"})" }}
{{- end }}
{{- if not .Values.api.tenants }}
{{- fail "api.tenants is required when api.enabled is true: at least one namespace, e.g. {team-a: {filesUri: s3://..., outputUri: s3://...}}" }}
{{- end }}
{{- if include "kubetune.namespaced" . }}
{{- range $namespace, $_ := .Values.api.tenants }}
{{- if ne $namespace $.Release.Namespace }}
{{- fail (printf "api.tenants.%s: rbac.scope Namespaced runs the operator for namespace %s only; a tenant in another namespace would get FineTuneJobs nobody runs" $namespace $.Release.Namespace) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
