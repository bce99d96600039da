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

{{/*
Where the database lives on a node (database.location, docs/databases.md), and the startup probe's
budget that follows from downloading it.
*/}}
{{- define "cased.databaseClaimMount" -}}/database{{- end }}

{{- define "cased.databaseLocation" -}}
{{- if eq .Values.database.location "claim" }}{{ include "cased.databaseClaimMount" . }}{{ else }}{{ .Values.database.uri }}{{ end }}
{{- end }}

{{/* baseSeconds for the model, plus twice the database's download at the rate a pod gets (none from a claim). */}}
{{- define "cased.startupFailureThreshold" -}}
{{- $startup := .Values.probes.startup }}
{{- if $startup.failureThreshold }}
{{- $startup.failureThreshold }}
{{- else }}
{{- $download := 0.0 }}
{{- if ne .Values.database.location "claim" }}
{{- $download = divf (mulf .Values.database.sizeGiB 1024 2) .Values.database.downloadMiBps }}
{{- end }}
{{- ceil (divf (addf (default 0 $startup.baseSeconds) $download) $startup.periodSeconds) | int }}
{{- end }}
{{- end }}

{{- define "cased.validateDatabase" -}}
{{- $db := .Values.database }}
{{- if and (eq $db.location "claim") (not $db.claimName) }}
{{- fail "database.location is claim: set database.claimName to a ReadOnlyMany PersistentVolumeClaim holding the database folder" }}
{{- end }}
{{- if and (eq $db.location "node") .Values.cache.existingClaim }}
{{- fail "database.location is node: the node's folder is the cache; unset cache.existingClaim (or use location pod)" }}
{{- end }}
{{- end }}
