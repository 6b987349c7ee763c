{{/*
Names and labels.

Every sidecache.* template takes one dict argument, so that a parent chart can include it
with the values it keeps for sidecache:
  top:    the root context ($) of the chart that renders the template
  values: the sidecache values (.Values in this chart, .Values.sidecache in a parent)
This chart calls them with (dict "top" $ "values" .Values).
*/}}

{{- define "sidecache.name" -}}
{{- default "sidecache" .values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "sidecache.fullname" -}}
{{- if .values.fullnameOverride -}}
{{- .values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "sidecache.name" . -}}
{{- if contains $name .top.Release.Name -}}
{{- .top.Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .top.Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "sidecache.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sidecache.name" . }}
app.kubernetes.io/instance: {{ .top.Release.Name }}
{{- end -}}

{{- define "sidecache.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .top.Chart.Name .top.Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "sidecache.selectorLabels" . }}
{{- with .top.Chart.AppVersion }}
app.kubernetes.io/version: {{ . | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .top.Release.Service }}
{{- end -}}

{{- define "sidecache.image" -}}
{{- $image := .values.image -}}
{{- if $image.digest -}}
{{- printf "%s@%s" $image.repository $image.digest -}}
{{- else -}}
{{- printf "%s:%s" $image.repository ($image.tag | toString) -}}
{{- end -}}
{{- end -}}

{{- define "sidecache.policyConfigMapName" -}}
{{- if .values.policy.existingConfigMap -}}
{{- .values.policy.existingConfigMap -}}
{{- else -}}
{{- printf "%s-policy" (include "sidecache.fullname" . | trunc 56 | trimSuffix "-") -}}
{{- end -}}
{{- end -}}

{{/*
The lifecycle of a container that pauses `seconds` before SIGTERM (a dict: top, seconds,
action). The sleep action is on by default from Kubernetes 1.30 (PodLifecycleSleepAction).
*/}}
{{- define "sidecache.preStopSleep" -}}
{{- $action := .action -}}
{{- if eq $action "auto" -}}
{{- $action = ternary "sleep" "exec" (semverCompare ">=1.30-0" .top.Capabilities.KubeVersion.Version) -}}
{{- end -}}
{{- if eq $action "sleep" -}}
preStop:
  sleep:
    seconds: {{ int .seconds }}
{{- else -}}
preStop:
  exec:
    command: ["sleep", {{ int .seconds | toString | quote }}]
{{- end -}}
{{- end -}}

{{/* Refuse values that would cut the drain short or that Kubernetes would reject. */}}
{{- define "sidecache.checks" -}}
{{- $v := .values -}}
{{- if and $v.snapshot.enabled (not $v.policy.existingConfigMap) -}}
{{- $path := dig "server" "snapshot" "path" "" (fromYaml $v.policy.content) | toString -}}
{{- if not (hasPrefix (printf "%s/" $v.snapshot.mountPath) $path) -}}
{{- fail (printf "snapshot.enabled: the policy's server.snapshot.path must be a file in snapshot.mountPath, e.g. server: {snapshot: {path: %s/snapshot, interval: 5m}} (it is %q)" $v.snapshot.mountPath $path) -}}
{{- end -}}
{{- end -}}
{{- $needed := add (int $v.preStop.sleepSeconds) (int $v.sidecar.drainSeconds) -}}
{{- if le (int $v.terminationGracePeriodSeconds) (int $needed) -}}
{{- fail (printf "terminationGracePeriodSeconds (%d) must exceed preStop.sleepSeconds + sidecar.drainSeconds (%d)" (int $v.terminationGracePeriodSeconds) (int $needed)) -}}
{{- end -}}
{{- if and (not $v.policy.existingConfigMap) (not $v.policy.content) -}}
{{- fail "set policy.content or policy.existingConfigMap" -}}
{{- end -}}
{{- if and $v.redis.existingSecret (contains "@" $v.redis.url) -}}
{{- fail "redis.url must carry no userinfo when redis.existingSecret supplies the password" -}}
{{- end -}}
{{- if eq (int $v.sidecar.port) (int $v.sidecar.adminPort) -}}
{{- fail "sidecar.port and sidecar.adminPort must differ" -}}
{{- end -}}
{{- end -}}
