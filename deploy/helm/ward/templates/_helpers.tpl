# Generated from crates/kube/src/install.rs (the manifests `ward install` prints); do
# not edit: `WARD_BLESS_HELM=1 cargo test -p ward-kube helm` writes it again.
{{/* The webhooks' clientConfig for a path: the Service, or webhookUrl when set. */}}
{{- define "ward.clientConfig" -}}
{{- $root := index . 0 -}}
{{- $path := index . 1 -}}
{{- if $root.Values.webhookUrl -}}
{{- dict "url" (printf "%s%s" (trimSuffix "/" $root.Values.webhookUrl) $path) | toJson -}}
{{- else -}}
{{- dict "service" (dict "name" "ward-control-plane" "namespace" $root.Release.Namespace "path" $path "port" 443) | toJson -}}
{{- end -}}
{{- end -}}
