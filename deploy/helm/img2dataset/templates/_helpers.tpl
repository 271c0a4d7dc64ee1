{{/*
Chart name, truncated to 63 characters (a DNS label).
*/}}
{{- define "img2dataset.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name: `<release>-<chart>`, or the release name when it already contains the
chart name. Truncated to 52 characters so that a component suffix (`-materializer`) still fits
a 63-character name.
*/}}
{{- define "img2dataset.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Chart name and version, for the helm.sh/chart label.
*/}}
{{- define "img2dataset.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels of every resource.
*/}}
{{- define "img2dataset.labels" -}}
helm.sh/chart: {{ include "img2dataset.chart" . }}
{{ include "img2dataset.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: img2dataset
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Selector labels shared by every pod of the release.
*/}}
{{- define "img2dataset.selectorLabels" -}}
app.kubernetes.io/name: {{ include "img2dataset.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Name of one component's resources: `<fullname>-<component>`.
Call with (dict "root" $ "component" "fetcher").
*/}}
{{- define "img2dataset.componentName" -}}
{{- printf "%s-%s" (include "img2dataset.fullname" .root) .component | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels of one component's resources. Call with (dict "root" $ "component" "fetcher").
*/}}
{{- define "img2dataset.componentLabels" -}}
{{ include "img2dataset.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
Selector labels of one component's pods. Call with (dict "root" $ "component" "fetcher").
*/}}
{{- define "img2dataset.componentSelectorLabels" -}}
{{ include "img2dataset.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
Name of the ServiceAccount the pods use.
*/}}
{{- define "img2dataset.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "img2dataset.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The container image reference.
*/}}
{{- define "img2dataset.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/*
The index DSN. The password is not in it: libpq reads PGPASSWORD, set from the Secret.
*/}}
{{- define "img2dataset.indexUrl" -}}
{{- with .Values.postgres }}
{{- printf "postgresql://%s@%s:%v/%s?sslmode=%s" (.user | urlquery) .host (int .port) .database .sslMode }}
{{- end }}
{{- end }}

{{/*
Whether the fetcher Deployment's replica count is left to an autoscaler.
*/}}
{{- define "img2dataset.fetcherAutoscaled" -}}
{{- if .Values.fetcher.autoscaling.enabled }}true{{ end }}
{{- end }}

{{/*
Settings that the chart checks before rendering anything: the replica counts that partition
counts bound (a consumer beyond the partition count only idles; an appender beyond APPEND's
partitions would own nothing).
*/}}
{{- define "img2dataset.validate" -}}
{{- $topics := .Values.kafka.topics }}
{{- $f := .Values.fetcher }}
{{- if and (not $f.autoscaling.enabled) (gt (int $f.replicaCount) (int $topics.urls.partitions)) }}
{{- fail (printf "fetcher.replicaCount (%v) exceeds kafka.topics.urls.partitions (%v)" $f.replicaCount $topics.urls.partitions) }}
{{- end }}
{{- if $f.autoscaling.enabled }}
{{- if gt (int $f.autoscaling.maxReplicas) (int $topics.urls.partitions) }}
{{- fail (printf "fetcher.autoscaling.maxReplicas (%v) exceeds kafka.topics.urls.partitions (%v)" $f.autoscaling.maxReplicas $topics.urls.partitions) }}
{{- end }}
{{- if gt (int $f.autoscaling.minReplicas) (int $f.autoscaling.maxReplicas) }}
{{- fail "fetcher.autoscaling.minReplicas exceeds fetcher.autoscaling.maxReplicas" }}
{{- end }}
{{- if and (not $f.autoscaling.keda.enabled) (lt (int $f.autoscaling.minReplicas) 1) }}
{{- fail "fetcher.autoscaling.minReplicas must be at least 1 with an HPA (only KEDA scales to zero)" }}
{{- end }}
{{- end }}
{{- if gt (int .Values.appender.replicaCount) (int $topics.append.partitions) }}
{{- fail (printf "appender.replicaCount (%v) exceeds kafka.topics.append.partitions (%v): each APPEND partition has exactly one owner" .Values.appender.replicaCount $topics.append.partitions) }}
{{- end }}
{{- if gt (int .Values.materializer.replicaCount) (int $topics.segmentClosed.partitions) }}
{{- fail (printf "materializer.replicaCount (%v) exceeds kafka.topics.segmentClosed.partitions (%v)" .Values.materializer.replicaCount $topics.segmentClosed.partitions) }}
{{- end }}
{{- end }}
