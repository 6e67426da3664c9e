{{- define "router.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "router.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* The release's pods; each component adds its own label, so that no selector takes the other's. */}}
{{- define "router.releaseLabels" -}}
app.kubernetes.io/name: {{ include "router.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "router.selectorLabels" -}}
{{ include "router.releaseLabels" . }}
app.kubernetes.io/component: router
{{- end -}}

{{- define "router.redisSelectorLabels" -}}
{{ include "router.releaseLabels" . }}
app.kubernetes.io/component: redis
{{- end -}}

{{- define "router.chartLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "router.labels" -}}
{{ include "router.selectorLabels" . }}
{{ include "router.chartLabels" . }}
{{- end -}}

{{- define "router.redisLabels" -}}
{{ include "router.redisSelectorLabels" . }}
{{ include "router.chartLabels" . }}
{{- end -}}

{{/* The Secret the router's environment comes from: the chart's own, or the one named. */}}
{{- define "router.secretName" -}}
{{- .Values.secret.existingSecret | default (include "router.fullname" .) -}}
{{- end -}}

{{- define "router.redisName" -}}
{{- printf "%s-redis" (include "router.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "router.image" -}}
{{- $repository := .Values.image.repository -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion -}}
{{- if and .Values.gpu.enabled .Values.gpu.image.repository -}}
{{- $repository = .Values.gpu.image.repository -}}
{{- $tag = .Values.gpu.image.tag | default $tag -}}
{{- end -}}
{{- printf "%s:%s" $repository $tag -}}
{{- end -}}

{{/* terminationGracePeriodSeconds: the pause before SIGTERM, the router's drain, and 5 s to exit. */}}
{{- define "router.terminationGraceSeconds" -}}
{{- add (int .Values.shutdown.preStopSleepSeconds) (int (ceil .Values.shutdown.graceSeconds)) 5 -}}
{{- end -}}
