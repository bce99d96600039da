{{/* Names and labels. */}}
{{- define "cased.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "cased.fullname" -}}
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

{{- define "cased.selectorLabels" -}}
app.kubernetes.io/name: {{ include "cased.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "cased.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "cased.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: worker
{{- end }}

{{- define "cased.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "cased.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "cased.image" -}}
{{- printf "%s:%s" .Values.image.repository (toString (default .Chart.AppVersion .Values.image.tag)) }}
{{- end }}

{{/* One source for values the worker and KEDA must agree on. */}}
{{- define "cased.appId" -}}
{{- .Values.kafka.appId }}
{{- end }}

{{- define "cased.bootstrapServers" -}}
{{- join "," .Values.kafka.bootstrapServers }}
{{- end }}

{{- define "cased.broker" -}}
{{- printf "kafka://%s" (include "cased.bootstrapServers" .) }}
{{- end }}

{{- define "cased.saslEnabled" -}}
{{- if hasPrefix "SASL_" .Values.kafka.security.protocol }}true{{ end }}
{{- end }}

{{- define "cased.tlsEnabled" -}}
{{- if has .Values.kafka.security.protocol (list "SSL" "SASL_SSL") }}true{{ end }}
{{- end }}

{{- define "cased.caMountPath" -}}/etc/cased/kafka-ca{{- end }}

{{/*
Cross-field rules JSON schema cannot express. Included by the Deployment so every render
checks them; `fail` aborts rendering with the message.
*/}}
{{- define "cased.validate" -}}
{{- $a := .Values.autoscaling }}
{{- if ne $a.mode "none" }}
{{- if gt (int $a.minReplicas) (int $a.maxReplicas) }}
{{- fail (printf "autoscaling.maxReplicas (%d) must be >= autoscaling.minReplicas (%d)" (int $a.maxReplicas) (int $a.minReplicas)) }}
{{- end }}
{{- if gt (int $a.maxReplicas) (int .Values.kafka.partitions) }}
{{- fail (printf "autoscaling.maxReplicas (%d) exceeds kafka.partitions (%d): workers beyond the partition count of %s would sit idle" (int $a.maxReplicas) (int .Values.kafka.partitions) .Values.kafka.topics.images) }}
{{- end }}
{{- end }}
{{- if and (eq $a.mode "hpa") (not (dig "requests" "cpu" "" .Values.resources)) }}
{{- fail "autoscaling.mode=hpa needs resources.requests.cpu (the HPA scales on CPU utilisation of the request)" }}
{{- end }}
{{- if and .Values.model.pretrained .Values.model.checkpoint }}
{{- fail "set model.pretrained (a tag) or model.checkpoint (a file/URI), not both: both become CASED_PRETRAINED" }}
{{- end }}
{{- range $k, $_ := .Values.extraEnv }}
{{- if regexMatch "(?i)(SECRET|PASSWORD|PASSWD|TOKEN|ACCESS_KEY|CREDENTIAL)" $k }}
{{- fail (printf "extraEnv.%s looks like a secret and would be stored in a ConfigMap: use s3.existingSecret or kafka.security.sasl.existingSecret" $k) }}
{{- end }}
{{- end }}
{{- $pdb := .Values.podDisruptionBudget }}
{{- if and $pdb.enabled (not (kindIs "invalid" $pdb.minAvailable)) (not (kindIs "invalid" $pdb.maxUnavailable)) }}
{{- fail "podDisruptionBudget: set minAvailable or maxUnavailable, not both (null the other)" }}
{{- end }}
{{- end }}
