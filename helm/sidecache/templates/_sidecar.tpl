{{/*
The named templates to include in your own chart (see docs/kubernetes.md):
  sidecache.container       the sidecache container, a one-item list: under
                            initContainers when sidecar.native, else under containers
  sidecache.volumes         its volumes: the policy directory, /tmp and, with
                            snapshot.enabled, the snapshot directory
  sidecache.podAnnotations  checksum/policy (and prometheus.io/* if enabled)
  sidecache.configMap       the policy ConfigMap (this chart renders it already)
  sidecache.env             the container's env list (REDIS_URL, REDIS_PASSWORD, extraEnv)
Each takes (dict "top" $ "values" <the sidecache values>).
*/}}

{{- define "sidecache.container" -}}
{{- include "sidecache.checks" . -}}
{{- $v := .values -}}
{{- $admin := dict "port" "sidecache-admin" -}}
{{- $args := list "run" "--policy" "/etc/sidecache/policy.yaml"
      "--listen" (printf "0.0.0.0:%d" (int $v.sidecar.port))
      "--admin-listen" (printf "0.0.0.0:%d" (int $v.sidecar.adminPort))
      "--workers" (int $v.sidecar.workers | toString) -}}
{{- with $v.sidecar.origin -}}
{{- $args = concat $args (list "--origin" .) -}}
{{- end -}}
{{- $env := include "sidecache.env" . | fromYamlArray -}}
{{- $mounts := list
      (dict "name" "sidecache-policy" "mountPath" "/etc/sidecache" "readOnly" true)
      (dict "name" "sidecache-tmp" "mountPath" "/tmp") -}}
{{- if $v.snapshot.enabled -}}
{{- $mounts = append $mounts (dict "name" "sidecache-snapshot" "mountPath" $v.snapshot.mountPath) -}}
{{- end -}}
{{- $c := dict
      "name" "sidecache"
      "image" (include "sidecache.image" .)
      "imagePullPolicy" $v.image.pullPolicy
      "args" (concat $args $v.extraArgs)
      "ports" (list
        (dict "name" "sidecache" "containerPort" (int $v.sidecar.port) "protocol" "TCP")
        (dict "name" "sidecache-admin" "containerPort" (int $v.sidecar.adminPort) "protocol" "TCP"))
      "startupProbe" (merge (dict "httpGet" (merge (dict "path" "/readyz") $admin)) $v.startupProbe)
      "livenessProbe" (merge (dict "httpGet" (merge (dict "path" "/healthz") $admin)) $v.livenessProbe)
      "readinessProbe" (merge (dict "httpGet" (merge (dict "path" "/readyz") $admin)) $v.readinessProbe)
      "resources" $v.resources
      "securityContext" $v.securityContext
      "volumeMounts" (concat $mounts $v.extraVolumeMounts) -}}
{{- if $v.sidecar.native -}}
{{- /* Stopped only after the app containers have exited: no preStop needed. */ -}}
{{- $_ := set $c "restartPolicy" "Always" -}}
{{- else -}}
{{- /* Stopped together with the app: keep serving while endpoints update. */ -}}
{{- $sleep := dict "top" .top "seconds" $v.preStop.sleepSeconds "action" $v.preStop.action -}}
{{- $_ := set $c "lifecycle" (include "sidecache.preStopSleep" $sleep | fromYaml) -}}
{{- end -}}
{{- with $env }}{{ $_ := set $c "env" . }}{{ end -}}
{{- with $v.extraEnvFrom }}{{ $_ := set $c "envFrom" . }}{{ end -}}
{{- toYaml (list $c) -}}
{{- end -}}

{{/* The container's environment: REDIS_URL (with the Secret's password spliced in) and
extraEnv; the audit CronJob gets the same, so the policy's ${REDIS_URL} means one thing. */}}
{{- define "sidecache.env" -}}
{{- $v := .values -}}
{{- $env := list -}}
{{- $redisUrl := $v.redis.url -}}
{{- if $v.redis.existingSecret -}}
{{- $ref := dict "name" $v.redis.existingSecret "key" $v.redis.existingSecretPasswordKey -}}
{{- $env = append $env (dict "name" "REDIS_PASSWORD" "valueFrom" (dict "secretKeyRef" $ref)) -}}
{{- with $redisUrl -}}
{{- /* The kubelet expands $(REDIS_PASSWORD): it is defined above. */ -}}
{{- $parts := splitn "://" 2 . -}}
{{- $redisUrl = printf "%s://:$(REDIS_PASSWORD)@%s" $parts._0 $parts._1 -}}
{{- end -}}
{{- end -}}
{{- with $redisUrl -}}
{{- $env = append $env (dict "name" "REDIS_URL" "value" .) -}}
{{- end -}}
{{- $env = concat $env $v.extraEnv -}}
{{- toYaml $env -}}
{{- end -}}

{{- define "sidecache.volumes" -}}
{{- $policy := dict
      "name" (include "sidecache.policyConfigMapName" .)
      "items" (list (dict "key" (ternary .values.policy.existingConfigMapKey "policy.yaml" (not (empty .values.policy.existingConfigMap))) "path" "policy.yaml")) -}}
{{- /* A whole-directory mount: the kubelet swaps its ..data symlink on update, which
       hot reload watches for. A subPath mount would never be updated. */ -}}
{{- $volumes := list
      (dict "name" "sidecache-policy" "configMap" $policy)
      (dict "name" "sidecache-tmp" "emptyDir" (dict "sizeLimit" .values.tmpSizeLimit)) -}}
{{- /* server.snapshot's directory: an emptyDir outlives container restarts in the pod */ -}}
{{- if .values.snapshot.enabled -}}
{{- $volumes = append $volumes (dict "name" "sidecache-snapshot" "emptyDir" (dict "sizeLimit" .values.snapshot.sizeLimit)) -}}
{{- end -}}
{{- toYaml $volumes -}}
{{- end -}}

{{- define "sidecache.podAnnotations" -}}
{{- $out := dict -}}
{{- if and .values.policy.rollOnChange (not .values.policy.existingConfigMap) -}}
{{- $_ := set $out "checksum/policy" (sha256sum .values.policy.content) -}}
{{- end -}}
{{- if .values.metrics.prometheusAnnotations -}}
{{- $_ := set $out "prometheus.io/scrape" "true" -}}
{{- $_ := set $out "prometheus.io/port" (int .values.sidecar.adminPort | toString) -}}
{{- $_ := set $out "prometheus.io/path" "/metrics" -}}
{{- end -}}
{{- if $out }}{{ toYaml $out }}{{ end -}}
{{- end -}}

{{- define "sidecache.configMap" -}}
{{- if not .values.policy.existingConfigMap -}}
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ include "sidecache.policyConfigMapName" . }}
  labels:
    {{- include "sidecache.labels" . | nindent 4 }}
data:
  {{- toYaml (dict "policy.yaml" .values.policy.content) | nindent 2 }}
{{- end -}}
{{- end -}}
