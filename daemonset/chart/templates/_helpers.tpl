{{/* The labels of every object: the same as the kustomize base's. */}}
{{- define "fatia.labels" -}}
app.kubernetes.io/name: fatia
app.kubernetes.io/part-of: fatia
{{- end }}

{{/* The ServiceAccount's subject, for every binding. */}}
{{- define "fatia.subject" -}}
- kind: ServiceAccount
  name: fatia
  namespace: {{ .Release.Namespace }}
{{- end }}
