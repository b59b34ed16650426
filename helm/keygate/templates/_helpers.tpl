{{- define "keygate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "keygate.fullname" -}}
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

{{- define "keygate.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "keygate.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "keygate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "keygate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "keygate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "keygate.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "keygate.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/* The Secret holding a value: the user's existing one, else the chart's own. */}}
{{- define "keygate.secretName" -}}
{{- $ctx := index . 0 }}{{- $existing := index . 1 }}
{{- if $existing }}{{ $existing }}{{ else }}{{ include "keygate.fullname" $ctx }}{{ end }}
{{- end }}

{{/* Fails the render on combinations that cannot work. */}}
{{- define "keygate.validate" -}}
{{- $postgres := or .Values.externalDatabase.existingSecret (and .Values.secrets.create .Values.secrets.databaseUrl) }}
{{- if and (not $postgres) (or (gt (int .Values.replicaCount) 1) .Values.autoscaling.enabled) }}
{{- fail "SQLite (no externalDatabase) serves one replica: set replicaCount=1 and autoscaling.enabled=false, or use PostgreSQL (externalDatabase.existingSecret)" }}
{{- end }}
{{- if and (eq (toString .Values.config.rate_limiter) "redis") (not (or .Values.redis.existingSecret (and .Values.secrets.create .Values.secrets.redisUrl))) }}
{{- fail "config.rate_limiter=redis needs redis.existingSecret (or secrets.redisUrl)" }}
{{- end }}
{{- if and (gt (int .Values.replicaCount) 1) (ne (toString .Values.config.rate_limiter) "redis") }}
{{- fail "several replicas with the in-memory limiter would each grant the full rate budget: set config.rate_limiter=redis" }}
{{- end }}
{{- end }}

{{/* Environment: secrets by reference, never inline. */}}
{{- define "keygate.env" -}}
- name: KEYGATE_CONFIG
  value: /etc/keygate/keygate.toml
{{- if or .Values.externalDatabase.existingSecret (and .Values.secrets.create .Values.secrets.databaseUrl) }}
- name: KEYGATE_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "keygate.secretName" (list . .Values.externalDatabase.existingSecret) }}
      key: {{ if .Values.externalDatabase.existingSecret }}{{ .Values.externalDatabase.existingSecretKey }}{{ else }}database-url{{ end }}
{{- end }}
{{- if or .Values.redis.existingSecret (and .Values.secrets.create .Values.secrets.redisUrl) }}
- name: KEYGATE_REDIS__URL
  valueFrom:
    secretKeyRef:
      name: {{ include "keygate.secretName" (list . .Values.redis.existingSecret) }}
      key: {{ if .Values.redis.existingSecret }}{{ .Values.redis.existingSecretKey }}{{ else }}redis-url{{ end }}
{{- end }}
{{- if or .Values.adminToken.existingSecret (and .Values.secrets.create .Values.secrets.adminToken) }}
- name: KEYGATE_ADMIN_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "keygate.secretName" (list . .Values.adminToken.existingSecret) }}
      key: {{ if .Values.adminToken.existingSecret }}{{ .Values.adminToken.existingSecretKey }}{{ else }}admin-token{{ end }}
{{- end }}
{{- if or .Values.authorizeToken.existingSecret (and .Values.secrets.create .Values.secrets.authorizeToken) }}
- name: KEYGATE_AUTHORIZE_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "keygate.secretName" (list . .Values.authorizeToken.existingSecret) }}
      key: {{ if .Values.authorizeToken.existingSecret }}{{ .Values.authorizeToken.existingSecretKey }}{{ else }}authorize-token{{ end }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}
