{{/* Name of the release's objects: the release name, with "hookwarden" unless it has it. */}}
{{- define "hookwarden.fullname" -}}
{{- if contains "hookwarden" .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-hookwarden" .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "hookwarden.labels" -}}
app.kubernetes.io/name: hookwarden
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: hookwarden
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Selector labels of one component: include with (list . "receiver"). */}}
{{- define "hookwarden.selector" -}}
app.kubernetes.io/name: hookwarden
app.kubernetes.io/instance: {{ (index . 0).Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "hookwarden.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "hookwarden.adminSecret" -}}
{{ .Values.admin.existingSecret | default (printf "%s-admin" (include "hookwarden.fullname" .)) }}
{{- end -}}

{{/* Where the receivers' Secrets are copied (see values.yaml). */}}
{{- define "hookwarden.keysNamespace" -}}
{{ .Values.keysNamespace | default (printf "%s-keys" .Release.Namespace | trunc 63 | trimSuffix "-") }}
{{- end -}}

{{- define "hookwarden.publicBaseUrl" -}}
{{- if .Values.publicBaseUrl -}}
{{ .Values.publicBaseUrl | trimSuffix "/" }}
{{- else if and .Values.receiver.ingress.enabled .Values.receiver.ingress.host -}}
https://{{ .Values.receiver.ingress.host }}
{{- end -}}
{{- end -}}

{{/* Restricted Pod Security, for every container. */}}
{{- define "hookwarden.containerSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Environment shared by the operator and the receivers. */}}
{{- define "hookwarden.env" -}}
- name: POD_NAME
  valueFrom: {fieldRef: {fieldPath: metadata.name}}
- name: POD_UID
  valueFrom: {fieldRef: {fieldPath: metadata.uid}}
- name: POD_NAMESPACE
  valueFrom: {fieldRef: {fieldPath: metadata.namespace}}
{{- with .Values.watchNamespace }}
- name: HOOKWARDEN_NAMESPACE
  value: {{ . | quote }}
{{- end }}
- name: HOOKWARDEN_KEYS_NAMESPACE
  value: {{ include "hookwarden.keysNamespace" . | quote }}
{{- if include "hookwarden.ownRedis" . }}
- name: REDIS_PASSWORD
  valueFrom: {secretKeyRef: {name: {{ include "hookwarden.redisSecret" . }}, key: password}}
{{- end }}
- name: REDIS_URL
{{- if .Values.redis.urlSecretRef.name }}
  valueFrom: {secretKeyRef: {name: {{ .Values.redis.urlSecretRef.name }}, key: {{ .Values.redis.urlSecretRef.key | default "url" }}}}
{{- else if .Values.redis.url }}
  value: {{ .Values.redis.url | quote }}
{{- else if .Values.redis.sentinel.masterName }}
  value: {{ printf "redis+sentinel://%s/%s" (join "," .Values.redis.sentinel.addresses) .Values.redis.sentinel.masterName | quote }}
{{- else if .Values.redis.cluster.nodes }}
  value: {{ printf "redis+cluster://%s" (join "," .Values.redis.cluster.nodes) | quote }}
{{- else }}
  value: {{ printf "redis://:$(REDIS_PASSWORD)@%s-redis:6379" (include "hookwarden.fullname" .) | quote }}
{{- end }}
- name: HOOKWARDEN_REDIS_PREFIX
  value: {{ .Values.redis.prefix | quote }}
- name: HOOKWARDEN_GITHUB_META_CONFIGMAP
  value: {{ printf "%s-github-meta" (include "hookwarden.fullname" .) | quote }}
- name: HOOKWARDEN_REDIS_REPLICAS
  value: {{ .Values.redis.ackReplicas | int64 | quote }}
- name: HOOKWARDEN_REDIS_REPLICA_TIMEOUT
  value: {{ printf "%dms" (.Values.redis.ackTimeoutMs | int64) | quote }}
- name: RUST_LOG
  value: {{ .Values.logLevel | quote }}
{{- end -}}

{{/* The Secret with the password of the chart's Redis (key "password"). */}}
{{- define "hookwarden.redisSecret" -}}
{{- .Values.redis.auth.existingSecret | default (printf "%s-redis" (include "hookwarden.fullname" .)) -}}
{{- end -}}

{{/* Whether the chart runs Redis itself. */}}
{{- define "hookwarden.ownRedis" -}}
{{- if not (or .Values.redis.url .Values.redis.urlSecretRef.name .Values.redis.sentinel.masterName .Values.redis.cluster.nodes) }}true{{ end -}}
{{- end -}}
