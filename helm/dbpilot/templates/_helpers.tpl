{{/*
Names and labels. Kept to the subset of Go templates and Sprig functions that
test/deploy/gotemplate.ts implements, so the chart can be checked without helm.
*/}}

{{- define "dbpilot.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The release name, unless it already contains the chart name. */}}
{{- define "dbpilot.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "dbpilot.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Selector labels: app.kubernetes.io/name=dbpilot is what the operator guide's kubectl lines select on. */}}
{{- define "dbpilot.selectorLabels" -}}
app.kubernetes.io/name: {{ include "dbpilot.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "dbpilot.labels" -}}
helm.sh/chart: {{ include "dbpilot.chart" . }}
{{ include "dbpilot.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: dbpilot
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "dbpilot.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "dbpilot.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "dbpilot.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}
{{- end -}}

{{/* The namespace dbpilot acts in (config.kubernetes.namespace): its Role and its Lease live there. */}}
{{- define "dbpilot.targetNamespace" -}}
{{- required "config.kubernetes.namespace must be set: the Role is created in the namespace dbpilot acts in" (dig "kubernetes" "namespace" "" .Values.config) -}}
{{- end -}}

{{/* Refuse configurations that would be unsafe to run. */}}
{{- define "dbpilot.validate" -}}
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.config.kubernetes) -}}
{{- fail "replicaCount > 1 needs config.kubernetes: without a Lease every replica would act" -}}
{{- end -}}
{{- if and .Values.secretEnv (not .Values.existingSecret) -}}
{{- fail "existingSecret must name the Secret holding the webhook token, the PostgreSQL password and the PagerDuty routing keys" -}}
{{- end -}}
{{- end -}}

{{/*
"true" when the disk-full handler (runbook scenario 3) may act or plan: its mode, else config.mode, is
not off. Only then does dbpilot get its PVC rights and the ClusterRole that reads StorageClasses.
*/}}
{{- define "dbpilot.diskFullEnabled" -}}
{{- $mode := dig "handlers" "disk-full" "mode" (dig "mode" "dry-run" .Values.config) .Values.config -}}
{{- if ne $mode "off" }}true{{ end -}}
{{- end -}}

{{/* The ClusterRole (StorageClasses are cluster-scoped): named after the release and the namespace, unique in the cluster. */}}
{{- define "dbpilot.clusterRoleName" -}}
{{- printf "%s-%s-storageclasses" (include "dbpilot.fullname" .) (include "dbpilot.targetNamespace" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
