{{/*
Environment of one component beyond the shared ConfigMap: its own settings, then the
component's `env` map (which wins). Call with (dict "root" $ "component" "fetcher").
*/}}
{{- define "img2dataset.componentEnv" -}}
{{- $c := index .root.Values .component }}
{{- $env := dict }}
{{- if has .component (list "fetcher" "appender" "materializer") }}
{{- $_ := set $env "I2D_GROUP_ID" $c.groupId }}
{{- end }}
{{- if eq .component "fetcher" }}
{{- $_ := set $env "I2D_THREAD_COUNT" (toString (int $c.threadCount)) }}
{{- $_ := set $env "I2D_PROCESSES_COUNT" (toString (int $c.processesCount)) }}
{{- end }}
{{- if eq .component "status" }}
{{- $_ := set $env "I2D_HTTP_PORT" (toString (int $c.port)) }}
{{- /* It binds 127.0.0.1 by default: the Service and the probes reach the pod's IP. */}}
{{- $_ := set $env "I2D_HTTP_HOST" "0.0.0.0" }}
{{- /* The groups whose lag the status page shows are the ones the workers use. */}}
{{- $_ := set $env "I2D_FETCHER_GROUP" .root.Values.fetcher.groupId }}
{{- $_ := set $env "I2D_APPENDER_GROUP" .root.Values.appender.groupId }}
{{- $_ := set $env "I2D_MATERIALIZER_GROUP" .root.Values.materializer.groupId }}
{{- end }}
{{- $env = mergeOverwrite $env (default (dict) $c.env) }}
{{- range $key := keys $env | sortAlpha }}
- name: {{ $key }}
  value: {{ index $env $key | toString | quote }}
{{- end }}
{{- end }}

{{/*
One component's Deployment. Call with (dict "root" $ "component" "fetcher").
*/}}
{{- define "img2dataset.deployment" -}}
{{- $root := .root }}
{{- $name := .component }}
{{- $c := index $root.Values $name }}
{{- $port := ternary "http" "metrics" (eq $name "status") }}
{{- $ctx := dict "root" $root "component" $name -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "img2dataset.componentName" $ctx }}
  labels:
    {{- include "img2dataset.componentLabels" $ctx | nindent 4 }}
spec:
  {{- if not (and (eq $name "fetcher") (include "img2dataset.fetcherAutoscaled" $root)) }}
  replicas: {{ $c.replicaCount }}
  {{- end }}
  revisionHistoryLimit: 3
  {{- if eq $name "appender" }}
  # An extra appender during a rollout would exceed APPEND's partitions: replace, never surge.
  strategy:
    type: RollingUpdate
    rollingUpdate:
      maxSurge: 0
      maxUnavailable: 1
  {{- end }}
  selector:
    matchLabels:
      {{- include "img2dataset.componentSelectorLabels" $ctx | nindent 6 }}
  template:
    metadata:
      annotations:
        checksum/config: {{ include (print $root.Template.BasePath "/configmap.yaml") $root | sha256sum }}
        {{- with $root.Values.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      labels:
        {{- include "img2dataset.componentLabels" $ctx | nindent 8 }}
        {{- if ne $name "status" }}
        # Selected by the metrics Service: the pods serving /metrics on the metrics port.
        img2dataset.io/worker: "true"
        {{- end }}
        {{- with $root.Values.podLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      serviceAccountName: {{ include "img2dataset.serviceAccountName" $root }}
      automountServiceAccountToken: {{ $root.Values.serviceAccount.automountToken }}
      {{- with $root.Values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      securityContext:
        {{- toYaml $root.Values.podSecurityContext | nindent 8 }}
      # SIGTERM makes the service finish and commit its work in flight before it exits.
      terminationGracePeriodSeconds: {{ $c.terminationGracePeriodSeconds }}
      containers:
        - name: {{ $name }}
          image: {{ include "img2dataset.image" $root | quote }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          args: [{{ $name | quote }}]
          securityContext:
            {{- toYaml $root.Values.securityContext | nindent 12 }}
          ports:
            {{- if eq $name "status" }}
            - name: http
              containerPort: {{ $c.port }}
              protocol: TCP
            {{- else }}
            - name: metrics
              containerPort: {{ $root.Values.metrics.port }}
              protocol: TCP
            {{- end }}
          envFrom:
            - configMapRef:
                name: {{ include "img2dataset.fullname" $root }}
          env:
            # The pod name identifies this instance in logs and the index's owner column.
            - name: I2D_OWNER
              valueFrom:
                fieldRef:
                  fieldPath: metadata.name
            {{- with $root.Values.kafka.existingSecret }}
            - name: I2D_KAFKA_CONFIG
              valueFrom:
                secretKeyRef:
                  name: {{ . }}
                  key: {{ $root.Values.kafka.configKey }}
            {{- end }}
            {{- with $root.Values.s3.existingSecret }}
            - name: AWS_ACCESS_KEY_ID
              valueFrom:
                secretKeyRef:
                  name: {{ . }}
                  key: {{ $root.Values.s3.accessKeyIdKey }}
            - name: AWS_SECRET_ACCESS_KEY
              valueFrom:
                secretKeyRef:
                  name: {{ . }}
                  key: {{ $root.Values.s3.secretAccessKeyKey }}
            {{- end }}
            {{- with $root.Values.postgres.existingSecret }}
            - name: PGPASSWORD
              valueFrom:
                secretKeyRef:
                  name: {{ . }}
                  key: {{ $root.Values.postgres.passwordKey }}
            {{- end }}
            {{- include "img2dataset.componentEnv" $ctx | trim | nindent 12 }}
          startupProbe:
            httpGet:
              path: /healthz
              port: {{ $port }}
            {{- toYaml $root.Values.probes.startup | nindent 12 }}
          livenessProbe:
            httpGet:
              path: /healthz
              port: {{ $port }}
            {{- toYaml $root.Values.probes.liveness | nindent 12 }}
          readinessProbe:
            httpGet:
              path: /readyz
              port: {{ $port }}
            {{- toYaml $root.Values.probes.readiness | nindent 12 }}
          resources:
            {{- toYaml $c.resources | nindent 12 }}
          volumeMounts:
            - name: tmp
              mountPath: /tmp
      volumes:
        - name: tmp
          emptyDir:
            sizeLimit: {{ $root.Values.tmpSizeLimit }}
      {{- with $c.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $c.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $c.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $c.topologySpreadConstraints }}
      topologySpreadConstraints:
        {{- toYaml . | nindent 8 }}
      {{- end }}
{{- end }}
