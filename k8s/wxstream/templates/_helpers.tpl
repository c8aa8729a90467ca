{{/* The stages, in start order. */}}
{{- define "wxstream.stages" -}}
ingest decrypt sink stats media
{{- end -}}

{{- define "wxstream.fullname" -}}
{{- if contains "wxstream" .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-wxstream" .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "wxstream.labels" -}}
app.kubernetes.io/name: wxstream
{{ include "wxstream.commonLabels" . }}
{{- end -}}

{{/* The labels every object has, its app.kubernetes.io/name aside. */}}
{{- define "wxstream.commonLabels" -}}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: wxstream
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Selector labels of one stage: (dict "root" $ "stage" "sink"). */}}
{{- define "wxstream.selector" -}}
app.kubernetes.io/name: wxstream
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .stage }}
{{- end -}}

{{- define "wxstream.image" -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ $tag }}
{{- end -}}
{{- end -}}

{{- define "wxstream.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{ .Values.serviceAccount.name | default (include "wxstream.fullname" .) }}
{{- else -}}
{{ .Values.serviceAccount.name | default "default" }}
{{- end -}}
{{- end -}}

{{/* A required Secret reference: (dict "ref" .Values.mysql.urlSecret "what" "mysql.urlSecret"). */}}
{{- define "wxstream.secretKeyRef" -}}
secretKeyRef: {name: {{ required (printf "%s.name: the Secret is required" .what) .ref.name | quote }}, key: {{ required (printf "%s.key is required" .what) .ref.key | quote }}}
{{- end -}}

{{/* The environment variable of a secret Kafka property: sasl.password -> WX_KAFKA_SASL_PASSWORD. */}}
{{- define "wxstream.kafkaSecretEnv" -}}
{{- printf "WX_KAFKA_%s" (. | upper | replace "." "_" | replace "-" "_") -}}
{{- end -}}

{{/* The environment entries of the secret Kafka properties, each from its Secret key (the root context). */}}
{{- define "wxstream.kafkaSecretEnvs" -}}
{{- range $property, $ref := .Values.kafka.secretProperties }}
- name: {{ include "wxstream.kafkaSecretEnv" $property }}
  valueFrom:
    {{- include "wxstream.secretKeyRef" (dict "ref" $ref "what" (printf "kafka.secretProperties.%s" $property)) | nindent 4 }}
{{- end }}
{{- end -}}

{{/* The restricted security context of every container (Pod Security "restricted"). */}}
{{- define "wxstream.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
capabilities: {drop: [ALL]}
seccompProfile: {type: RuntimeDefault}
{{- end -}}

{{- define "wxstream.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile: {type: RuntimeDefault}
{{- end -}}

{{/* Where a corp's secrets are mounted (the projected volume "corp-secrets"). */}}
{{- define "wxstream.corpSecretDir" -}}/etc/wxstream/corps{{- end -}}

{{/* The worker configuration's and the topology's mounts, and /tmp (the root is read-only). */}}
{{- define "wxstream.configMounts" -}}
- {name: worker, mountPath: /etc/wxstream/worker, readOnly: true}
- {name: topology, mountPath: /etc/wxstream/topology, readOnly: true}
- {name: tmp, mountPath: /tmp}
{{- end -}}

{{/* Their volumes, from the ConfigMap `configMap`: (dict "root" $ "configMap" NAME "tmp" SIZE). */}}
{{- define "wxstream.configVolumes" -}}
- name: worker
  configMap:
    name: {{ .configMap }}
    items: [{key: worker.yaml, path: worker.yaml}]
- name: topology
  configMap:
    name: {{ .configMap }}
    items:
      - {key: topics.yaml, path: topics.yaml}
      {{- range $stage := splitList " " (include "wxstream.stages" .root) }}
      {{- if (index $.root.Values $stage).enabled }}
      - {key: {{ $stage }}.yaml, path: connectors/{{ $stage }}.yaml}
      {{- end }}
      {{- end }}
- name: tmp
  emptyDir: {sizeLimit: {{ .tmp }}}
{{- end -}}
