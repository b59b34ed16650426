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

{{/* PostgreSQL (a URL from a Secret) rather than SQLite on the pod's volume. */}}
{{- define "keygate.postgres" -}}
{{- if or .Values.externalDatabase.existingSecret (and .Values.secrets.create .Values.secrets.databaseUrl) }}true{{ end }}
{{- end }}

{{/* The most replicas that may run at once: the HPA's maximum when it is on. */}}
{{- define "keygate.maxReplicas" -}}
{{- if .Values.autoscaling.enabled }}{{ int .Values.autoscaling.maxReplicas }}{{ else }}{{ int .Values.replicaCount }}{{ end }}
{{- end }}

{{/* The fewest replicas that run: what a PodDisruptionBudget can count on. */}}
{{- define "keygate.minReplicas" -}}
{{- if .Values.autoscaling.enabled }}{{ int .Values.autoscaling.minReplicas }}{{ else }}{{ int .Values.replicaCount }}{{ end }}
{{- end }}

{{/* Fails the render on combinations that cannot work. */}}
{{- define "keygate.validate" -}}
{{- $postgres := include "keygate.postgres" . }}
{{- $max := int (include "keygate.maxReplicas" .) }}
{{- $min := int (include "keygate.minReplicas" .) }}
{{- if and (not $postgres) (or (gt (int .Values.replicaCount) 1) .Values.autoscaling.enabled) }}
{{- fail "SQLite (no externalDatabase) serves one replica: set replicaCount=1 and autoscaling.enabled=false, or use PostgreSQL (externalDatabase.existingSecret)" }}
{{- end }}
{{- if and (eq (toString .Values.config.rate_limiter) "redis") (not (or .Values.redis.existingSecret (and .Values.secrets.create .Values.secrets.redisUrl))) }}
{{- fail "config.rate_limiter=redis needs redis.existingSecret (or secrets.redisUrl)" }}
{{- end }}
{{- /* The HPA scales to maxReplicas: each would grant the full budget just the same. */}}
{{- if and (gt $max 1) (ne (toString .Values.config.rate_limiter) "redis") }}
{{- fail (printf "up to %d replicas (replicaCount, or autoscaling.maxReplicas with the HPA) with the in-memory limiter would each grant the full rate budget: set config.rate_limiter=redis" $max) }}
{{- end }}
{{- if and .Values.autoscaling.enabled (gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) }}
{{- fail "autoscaling.minReplicas exceeds autoscaling.maxReplicas" }}
{{- end }}
{{- with .Values.podDisruptionBudget }}
{{- if .enabled }}
{{- $minAvailable := toString .minAvailable }}
{{- if and (ne $minAvailable "") (not (hasSuffix "%" $minAvailable)) (ge (int $minAvailable) $min) }}
{{- fail (printf "podDisruptionBudget.minAvailable=%s with %d replica(s) would block every node drain: use maxUnavailable (default 1) or a smaller minAvailable" $minAvailable $min) }}
{{- end }}
{{- if and (eq $minAvailable "") (eq (toString .maxUnavailable) "0") }}
{{- fail "podDisruptionBudget.maxUnavailable=0 would block every node drain" }}
{{- end }}
{{- end }}
{{- end }}
{{- if not (has (toString .Values.podAntiAffinity) (list "" "soft" "hard")) }}
{{- fail "podAntiAffinity must be \"\", soft or hard" }}
{{- end }}
{{- if and .Values.config.metrics (hasKey .Values.config.metrics "enabled") (not .Values.config.metrics.enabled) }}
{{- fail "config.metrics.enabled=false would take /healthz and /readyz away from the probes" }}
{{- end }}
{{- range .Values.extraEnv }}
{{- if or (has .name (list "KEYGATE_CONFIG" "KEYGATE_LISTEN")) (hasPrefix "KEYGATE_METRICS__" .name) }}
{{- fail (printf "extraEnv %s: the chart owns this setting (service.grpcPort, service.metricsPort, config); env would override it behind the probes' and the Service's back" .name) }}
{{- end }}
{{- end }}
{{- $preStop := int .Values.preStopSleepSeconds }}
{{- $grace := int (default 30 .Values.config.shutdown_grace_secs) }}
{{- if le (int .Values.terminationGracePeriodSeconds) (add $preStop $grace) }}
{{- fail (printf "terminationGracePeriodSeconds=%d must exceed preStopSleepSeconds + config.shutdown_grace_secs (%d): Kubernetes would kill the pod mid-drain" (int .Values.terminationGracePeriodSeconds) (add $preStop $grace)) }}
{{- end }}
{{- range $name, $value := dict "adminToken" .Values.secrets.adminToken "authorizeToken" .Values.secrets.authorizeToken }}
{{- if and $.Values.secrets.create $value (lt (len (toString $value)) 16) }}
{{- fail (printf "secrets.%s must be at least 16 characters (Keygate refuses to start with a shorter one)" $name) }}
{{- end }}
{{- end }}
{{- end }}

{{/* Environment: secrets by reference, never inline. */}}
{{- define "keygate.env" -}}
- name: KEYGATE_CONFIG
  value: /etc/keygate/keygate.toml
{{- if include "keygate.postgres" . }}
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
