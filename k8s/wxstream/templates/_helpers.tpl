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

{{/*
How the sink authenticates to Elasticsearch (the root context): "apiKey", "basic" (a user and a
password) or nothing; a mix, or half of a user and password, fails the rendering (the sink would
refuse it at start).
*/}}
{{- define "wxstream.elasticsearchAuth" -}}
{{- $es := .Values.elasticsearch -}}
{{- $user := $es.username -}}
{{- $password := ($es.passwordSecret | default dict).name -}}
{{- $apiKey := ($es.apiKeySecret | default dict).name -}}
{{- if and $apiKey (or $user $password) -}}
{{- fail "elasticsearch: an API key (apiKeySecret) or a user and password (username, passwordSecret), not both" -}}
{{- else if $apiKey -}}
apiKey
{{- else if and $user $password -}}
basic
{{- else if $user -}}
{{- fail "elasticsearch.username: the password's Secret (elasticsearch.passwordSecret.name) is required with a user" -}}
{{- else if $password -}}
{{- fail "elasticsearch.passwordSecret: the user (elasticsearch.username) is required with a password" -}}
{{- end -}}
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

{{/* Where the CA files of tls.caSecret are mounted, one file per key. */}}
{{- define "wxstream.tlsDir" -}}/etc/wxstream/tls{{- end -}}

{{/*
The worker configuration's and the topology's mounts, /tmp (the root is read-only), and the CA
files of tls.caSecret when named (the root context).
*/}}
{{- define "wxstream.configMounts" -}}
- {name: worker, mountPath: /etc/wxstream/worker, readOnly: true}
- {name: topology, mountPath: /etc/wxstream/topology, readOnly: true}
- {name: tmp, mountPath: /tmp}
{{- if .Values.tls.caSecret.name }}
- {name: tls-ca, mountPath: {{ include "wxstream.tlsDir" . }}, readOnly: true}
{{- end }}
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
{{- with .root.Values.tls.caSecret.name }}
- name: tls-ca
  secret: {secretName: {{ . | quote }}}
{{- end }}
{{- end -}}
