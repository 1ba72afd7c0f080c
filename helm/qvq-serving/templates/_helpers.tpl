{{/* Chart name, cut to 63 characters (a DNS label). */}}
{{- define "qvq-serving.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Resource name prefix: <release>-<chart>, or <release> when it already names the chart.
Cut to 40 characters: KubeRay appends cluster and pod suffixes to the RayService name. */}}
{{- define "qvq-serving.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "qvq-serving.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The stable subset used by selectors: never add to it (selectors are immutable). */}}
{{- define "qvq-serving.selectorLabels" -}}
app.kubernetes.io/name: {{ include "qvq-serving.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "qvq-serving.labels" -}}
helm.sh/chart: {{ include "qvq-serving.chart" . }}
{{ include "qvq-serving.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: qvq-serving
{{- end -}}

{{/* Labels of one role: pass (dict "ctx" $ "component" "gpu-worker"). */}}
{{- define "qvq-serving.componentLabels" -}}
{{ include "qvq-serving.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "qvq-serving.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "qvq-serving.gpusPerPod" -}}
{{- default .Values.serve.config.model.tensor_parallel_size .Values.gpuWorkers.gpusPerPod -}}
{{- end -}}

{{- define "qvq-serving.apiServiceName" -}}
{{- printf "%s-api" (include "qvq-serving.fullname" .) -}}
{{- end -}}

{{/* Where secrets are mounted inside the pods. */}}
{{- define "qvq-serving.s3CredentialsPath" -}}/var/run/secrets/qvq/s3/credentials{{- end -}}
{{- define "qvq-serving.apiKeysPath" -}}/var/run/secrets/qvq/api-keys/keys{{- end -}}

{{/* The serving config (serving/config.py's ServingConfig) the app is built from:
serve.config plus the storage and auth groups, with secret references turned into the paths
where the pods mount them. */}}
{{- define "qvq-serving.servingConfig" -}}
{{- $cfg := deepCopy .Values.serve.config -}}
{{- $storage := omit (deepCopy .Values.storage) "credentialsSecret" -}}
{{- if .Values.storage.credentialsSecret.name -}}
{{- if not $storage.s3 -}}
{{- fail "storage.credentialsSecret is set but storage.s3 is not: the credentials are for S3" -}}
{{- end -}}
{{- $_ := set $storage.s3 "credentials_file" (include "qvq-serving.s3CredentialsPath" .) -}}
{{- end -}}
{{- $_ := set $cfg "storage" $storage -}}
{{- $auth := dict "api_keys" .Values.auth.apiKeyHashes -}}
{{- if .Values.auth.apiKeysSecret.name -}}
{{- $_ := set $auth "api_keys_file" (include "qvq-serving.apiKeysPath" .) -}}
{{- end -}}
{{- $_ := set $cfg "auth" $auth -}}
{{- toYaml $cfg -}}
{{- end -}}

{{/* Volumes every Ray pod mounts: /dev/shm, caches, secrets. */}}
{{- define "qvq-serving.commonVolumes" -}}
- name: dshm
  emptyDir:
    medium: Memory
    sizeLimit: {{ .shmSize }}
- name: data
  emptyDir: {}
{{- with .ctx.Values.storage.credentialsSecret.name }}
- name: s3-credentials
  secret:
    secretName: {{ . }}
    defaultMode: 0400
    items:
      - key: {{ $.ctx.Values.storage.credentialsSecret.key }}
        path: credentials
{{- end }}
{{- with .ctx.Values.auth.apiKeysSecret.name }}
- name: api-keys
  secret:
    secretName: {{ . }}
    defaultMode: 0400
    items:
      - key: {{ $.ctx.Values.auth.apiKeysSecret.key }}
        path: keys
{{- end }}
{{- end -}}

{{- define "qvq-serving.commonMounts" -}}
- name: dshm
  mountPath: /dev/shm
- name: data
  mountPath: {{ .Values.serve.config.data_dir | default "/data/qvq" }}
{{- if .Values.storage.credentialsSecret.name }}
- name: s3-credentials
  mountPath: /var/run/secrets/qvq/s3
  readOnly: true
{{- end }}
{{- if .Values.auth.apiKeysSecret.name }}
- name: api-keys
  mountPath: /var/run/secrets/qvq/api-keys
  readOnly: true
{{- end }}
{{- end -}}

{{- define "qvq-serving.commonEnv" -}}
- name: RAY_SERVE_ENABLE_HA_PROXY
  value: "1"
- name: PYTHONUNBUFFERED
  value: "1"
{{- with .Values.serve.hubTokenSecret.name }}
- name: HF_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.serve.hubTokenSecret.key }}
{{- end }}
{{- with .Values.serve.env }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Model weights: volume(s) of the pods that run generators. */}}
{{- define "qvq-serving.weightsVolumes" -}}
{{- $w := .Values.serve.modelWeights -}}
{{- if eq $w.source "pvc" -}}
- name: model-weights
  persistentVolumeClaim:
    claimName: {{ required "serve.modelWeights.pvc.claimName is required when source is pvc" $w.pvc.claimName }}
    readOnly: {{ $w.pvc.readOnly }}
{{- else if or (eq $w.source "s3") (eq $w.source "tiny") -}}
- name: model-weights
  emptyDir:
    sizeLimit: {{ $w.s3.sizeLimit }}
{{- end }}
{{- end -}}

{{- define "qvq-serving.weightsMounts" -}}
{{- $w := .Values.serve.modelWeights -}}
{{- if has $w.source (list "pvc" "s3" "tiny") -}}
- name: model-weights
  mountPath: {{ $w.mountPath }}
  {{- if and (eq $w.source "pvc") $w.pvc.subPath }}
  subPath: {{ $w.pvc.subPath }}
  {{- end }}
  readOnly: {{ eq $w.source "pvc" | ternary $w.pvc.readOnly false }}
{{- end }}
{{- end -}}

{{/* The init container that fills the weights volume (s3 download or the tiny test model). */}}
{{- define "qvq-serving.weightsInit" -}}
{{- $w := .Values.serve.modelWeights -}}
{{- $path := .Values.serve.config.model.path -}}
{{- if or (eq $w.source "s3") (eq $w.source "tiny") -}}
{{- if not (hasPrefix (printf "%s/" $w.mountPath) $path) }}
{{- fail (printf "serve.config.model.path (%s) must be under serve.modelWeights.mountPath (%s) when the weights come from %s" $path $w.mountPath $w.source) }}
{{- end -}}
- name: model-weights
  image: {{ include "qvq-serving.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  {{- if eq $w.source "s3" }}
  command:
    - qvq
    - model
    - download
    - --source
    - {{ required "serve.modelWeights.s3.uri is required when source is s3" $w.s3.uri | quote }}
    - --dest
    - {{ $path | quote }}
    - --region
    - {{ .Values.storage.s3.region | default "us-east-1" | quote }}
    {{- with .Values.storage.s3.endpoint_url }}
    - --endpoint-url
    - {{ . | quote }}
    {{- end }}
    {{- if .Values.storage.credentialsSecret.name }}
    - --credentials-file
    - {{ include "qvq-serving.s3CredentialsPath" . }}
    {{- end }}
  {{- else }}
  command: [qvq, model, build-tiny, --out, {{ $path | quote }}]
  {{- end }}
  resources:
    requests: {cpu: "1", memory: 2Gi}
    limits: {cpu: "4", memory: 8Gi}
  volumeMounts:
    - name: model-weights
      mountPath: {{ $w.mountPath }}
    {{- if .Values.storage.credentialsSecret.name }}
    - name: s3-credentials
      mountPath: /var/run/secrets/qvq/s3
      readOnly: true
    {{- end }}
{{- end }}
{{- end -}}

{{/* One Ray container: (dict "ctx" $ "group" .Values.cpuWorkers "gpus" 0 "weights" true). */}}
{{- define "qvq-serving.rayContainer" -}}
{{- $ctx := .ctx -}}
- name: ray
  image: {{ include "qvq-serving.image" $ctx }}
  imagePullPolicy: {{ $ctx.Values.image.pullPolicy }}
  {{- with .ports }}
  ports:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  env:
    {{- include "qvq-serving.commonEnv" $ctx | nindent 4 }}
    {{- with .group.env }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  resources:
    requests:
      {{- toYaml .group.resources.requests | nindent 6 }}
      {{- if gt (int .gpus) 0 }}
      {{ $ctx.Values.gpuWorkers.gpuResourceName }}: {{ .gpus }}
      {{- end }}
    limits:
      {{- toYaml .group.resources.limits | nindent 6 }}
      {{- if gt (int .gpus) 0 }}
      {{ $ctx.Values.gpuWorkers.gpuResourceName }}: {{ .gpus }}
      {{- end }}
  volumeMounts:
    {{- include "qvq-serving.commonMounts" $ctx | nindent 4 }}
    {{- if .weights }}
    {{- with include "qvq-serving.weightsMounts" $ctx }}{{- . | nindent 4 }}{{- end }}
    {{- end }}
    {{- with .extraMounts }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  lifecycle:
    preStop:
      exec:
        command: ["/bin/sh", "-c", "ray stop"]
{{- end -}}

{{/* Pod scheduling knobs of one group. */}}
{{- define "qvq-serving.scheduling" -}}
{{- $s := dict -}}
{{- range $key := list "nodeSelector" "tolerations" "affinity" -}}
{{- with index $ $key -}}{{- $_ := set $s $key . -}}{{- end -}}
{{- end -}}
{{- if $s -}}{{- toYaml $s -}}{{- end -}}
{{- end -}}

{{/* The RayCluster spec shared by the RayService and the batch RayJob:
(dict "ctx" $ "cpuReplicas" n "gpuReplicas" n "autoscale" bool). */}}
{{- define "qvq-serving.rayClusterSpec" -}}
{{- $ := .ctx -}}
{{- $gpus := include "qvq-serving.gpusPerPod" $ | int -}}
{{- $weightsOnCpu := not $.Values.gpuWorkers.enabled -}}
rayVersion: {{ $.Values.rayVersion | quote }}
enableInTreeAutoscaling: {{ .autoscale }}
{{- if .autoscale }}
autoscalerOptions:
  {{- toYaml $.Values.autoscaler.options | nindent 2 }}
{{- end }}
{{- with $.Values.gcsFaultTolerance }}
{{- if .enabled }}
gcsFaultToleranceOptions:
  redisAddress: {{ required "gcsFaultTolerance.redisAddress is required when gcsFaultTolerance.enabled" .redisAddress | quote }}
  {{- if .redisPasswordSecret.name }}
  redisPassword:
    valueFrom:
      secretKeyRef:
        name: {{ .redisPasswordSecret.name }}
        key: {{ .redisPasswordSecret.key }}
  {{- end }}
  {{- with .externalStorageNamespace }}
  externalStorageNamespace: {{ . | quote }}
  {{- end }}
{{- end }}
{{- end }}
headGroupSpec:
  rayStartParams:
    {{- with $.Values.head.rayStartParams }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
    num-cpus: "0"
    num-gpus: "0"
    dashboard-host: 0.0.0.0
    metrics-export-port: "8080"
  template:
    metadata:
      labels:
        {{- include "qvq-serving.selectorLabels" $ | nindent 8 }}
        app.kubernetes.io/component: head
        {{- with $.Values.head.podLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- with $.Values.head.podAnnotations }}
      annotations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
    spec:
      {{- with $.Values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      containers:
        {{- include "qvq-serving.rayContainer" (dict "ctx" $ "group" $.Values.head "gpus" 0 "weights" false "ports" (list (dict "name" "gcs" "containerPort" 6379) (dict "name" "dashboard" "containerPort" 8265) (dict "name" "client" "containerPort" 10001) (dict "name" "serve" "containerPort" 8000) (dict "name" "metrics" "containerPort" 8080)) "extraMounts" .headMounts) | nindent 8 }}
      volumes:
        {{- include "qvq-serving.commonVolumes" (dict "ctx" $ "shmSize" $.Values.head.shmSize) | nindent 8 }}
        {{- with .headVolumes }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- with include "qvq-serving.scheduling" $.Values.head }}{{- . | nindent 6 }}{{- end }}
workerGroupSpecs:
  - groupName: cpu-workers
    replicas: {{ .cpuReplicas }}
    minReplicas: {{ .cpuMin }}
    maxReplicas: {{ .cpuMax }}
    rayStartParams:
      {{- with $.Values.cpuWorkers.rayStartParams }}
      {{- toYaml . | nindent 6 }}
      {{- end }}
      num-gpus: "0"
      resources: '"{\"qvq-cpu-worker\": 1000}"'
      metrics-export-port: "8080"
    template:
      metadata:
        labels:
          {{- include "qvq-serving.selectorLabels" $ | nindent 10 }}
          app.kubernetes.io/component: cpu-worker
          {{- with $.Values.cpuWorkers.podLabels }}
          {{- toYaml . | nindent 10 }}
          {{- end }}
        {{- with $.Values.cpuWorkers.podAnnotations }}
        annotations:
          {{- toYaml . | nindent 10 }}
        {{- end }}
      spec:
        {{- with $.Values.imagePullSecrets }}
        imagePullSecrets:
          {{- toYaml . | nindent 10 }}
        {{- end }}
        {{- if $weightsOnCpu }}
        {{- with (include "qvq-serving.weightsInit" $) }}
        initContainers:
          {{- . | nindent 10 }}
        {{- end }}
        {{- end }}
        containers:
          {{- include "qvq-serving.rayContainer" (dict "ctx" $ "group" $.Values.cpuWorkers "gpus" 0 "weights" $weightsOnCpu "ports" (list (dict "name" "serve" "containerPort" 8000) (dict "name" "metrics" "containerPort" 8080))) | nindent 10 }}
        volumes:
          {{- include "qvq-serving.commonVolumes" (dict "ctx" $ "shmSize" $.Values.cpuWorkers.shmSize) | nindent 10 }}
          {{- if $weightsOnCpu }}
          {{- with include "qvq-serving.weightsVolumes" $ }}{{- . | nindent 10 }}{{- end }}
          {{- end }}
        {{- with include "qvq-serving.scheduling" $.Values.cpuWorkers }}{{- . | nindent 8 }}{{- end }}
  {{- if $.Values.gpuWorkers.enabled }}
  - groupName: gpu-workers
    replicas: {{ .gpuReplicas }}
    minReplicas: {{ .gpuMin }}
    maxReplicas: {{ .gpuMax }}
    rayStartParams:
      {{- with $.Values.gpuWorkers.rayStartParams }}
      {{- toYaml . | nindent 6 }}
      {{- end }}
      num-gpus: {{ $gpus | quote }}
      metrics-export-port: "8080"
    template:
      metadata:
        labels:
          {{- include "qvq-serving.selectorLabels" $ | nindent 10 }}
          app.kubernetes.io/component: gpu-worker
          {{- with $.Values.gpuWorkers.podLabels }}
          {{- toYaml . | nindent 10 }}
          {{- end }}
        {{- with $.Values.gpuWorkers.podAnnotations }}
        annotations:
          {{- toYaml . | nindent 10 }}
        {{- end }}
      spec:
        {{- with $.Values.imagePullSecrets }}
        imagePullSecrets:
          {{- toYaml . | nindent 10 }}
        {{- end }}
        {{- with (include "qvq-serving.weightsInit" $) }}
        initContainers:
          {{- . | nindent 10 }}
        {{- end }}
        containers:
          {{- include "qvq-serving.rayContainer" (dict "ctx" $ "group" $.Values.gpuWorkers "gpus" $gpus "weights" true "ports" (list (dict "name" "serve" "containerPort" 8000) (dict "name" "metrics" "containerPort" 8080))) | nindent 10 }}
        volumes:
          {{- include "qvq-serving.commonVolumes" (dict "ctx" $ "shmSize" $.Values.gpuWorkers.shmSize) | nindent 10 }}
          {{- with include "qvq-serving.weightsVolumes" $ }}{{- . | nindent 10 }}{{- end }}
        {{- with include "qvq-serving.scheduling" $.Values.gpuWorkers }}{{- . | nindent 8 }}{{- end }}
  {{- end }}
{{- end -}}

{{/* Serve deployment overrides carrying the autoscaling bounds of the deployments of one
application (.roles: those it holds; .ctx: the root context). The deployment names and the
defaults come from files/roles.yaml, generated from the app's own table (serving/roles.py) and
AutoscalingConfig, so they equal what the app's code sets from the same config (a test checks
it). Having them from the first install makes later `kubectl qvq scale <deployment>` an
in-place update: Serve hashes the list of overridden deployments into the app's code version,
so adding an override later would restart every replica once, while changing one does not. */}}
{{- define "qvq-serving.deploymentOverrides" -}}
{{- $table := .ctx.Files.Get "files/roles.yaml" | fromYaml -}}
{{- $deployments := .deployments | default dict -}}
{{- $out := list -}}
{{- range $role := .roles -}}
{{- $name := index $table.deployments $role -}}
{{- $given := (index $deployments $role | default dict).autoscaling | default dict -}}
{{- $auto := merge (deepCopy $given) (deepCopy $table.autoscalingDefaults) -}}
{{- $_ := set $auto "initial_replicas" (max (int $auto.min_replicas) 1) -}}
{{- $out = append $out (dict "name" $name "autoscaling_config" $auto) -}}
{{- end -}}
{{- toYaml $out -}}
{{- end -}}
