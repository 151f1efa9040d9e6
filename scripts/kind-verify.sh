#!/usr/bin/env bash
# make kind-verify: the Marketplace verification (what `mpdev verify` does) on a local kind cluster.
# For people with Docker and kind; these project machines have no kind node image, so CI cannot run it. It is a
# thin script over code paths the tests cover against a real API server (tests/deployer/marketplace/test_cluster.py):
#   1. a kind cluster wired to a local registry on localhost:5001;
#   2. the app, tester and deployer images built and pushed there (the Dockerfile's deployer target lays out /data);
#   3. the Application CRD (deployer/crd/application.yaml);
#   4. what Marketplace provisions: namespace, placeholder Application, deployer ServiceAccount + RoleBinding,
#      the values Secret; then the deployer Job with /bin/deploy_with_tests.sh, as mpdev verify runs it;
#   5. the Job's log and verdict; the namespace deleted afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in docker kind kubectl; do
  command -v "$tool" >/dev/null || { echo "kind-verify: needs $tool on PATH" >&2; exit 2; }
done
CLUSTER=${KIND_CLUSTER:-erlmcp}
REGISTRY_PORT=${REGISTRY_PORT:-5001}
TAG=$(awk '/publishedVersion:/{gsub(/"/,"",$2); print $2; exit}' schema.yaml)
PREFIX=localhost:${REGISTRY_PORT}/erlmcp
NAME=apptest-$(head -c 4 /dev/urandom | od -An -tx1 | tr -d ' \n')

if [[ -z "$(docker ps -q -f name=kind-registry)" ]]; then
  docker run -d --restart=always -p "127.0.0.1:${REGISTRY_PORT}:5000" --name kind-registry registry:2 >/dev/null
fi
if ! kind get clusters | grep -qx "$CLUSTER"; then
  cat <<KIND | kind create cluster --name "$CLUSTER" --config=-
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
containerdConfigPatches:
- |-
  [plugins."io.containerd.grpc.v1.cri".registry.mirrors."localhost:${REGISTRY_PORT}"]
    endpoint = ["http://kind-registry:5000"]
KIND
  docker network connect kind kind-registry 2>/dev/null || true
fi
kubectl config use-context "kind-$CLUSTER" >/dev/null

docker build -t "$PREFIX:$TAG" --target server --build-arg "VERSION=$TAG" .
docker build -t "$PREFIX/tester:$TAG" --target tester --build-arg "VERSION=$TAG" .
docker build -t "$PREFIX/deployer:$TAG" --target deployer --build-arg "REGISTRY=$PREFIX" --build-arg "VERSION=$TAG" .
for image in "$PREFIX:$TAG" "$PREFIX/tester:$TAG" "$PREFIX/deployer:$TAG"; do docker push "$image"; done

kubectl apply -f deployer/crd/application.yaml
kubectl wait --for=condition=established crd/applications.app.k8s.io --timeout=60s
kubectl create namespace "$NAME"
trap 'kubectl delete namespace "$NAME" --wait=false >/dev/null 2>&1 || true' EXIT
labels="app.kubernetes.io/name=$NAME"
kubectl apply -n "$NAME" -f - <<APP
apiVersion: app.k8s.io/v1beta1
kind: Application
metadata: {name: $NAME, labels: {app.kubernetes.io/name: $NAME}}
spec: {selector: {matchLabels: {app.kubernetes.io/name: $NAME}}, assemblyPhase: Pending}
APP
kubectl create serviceaccount -n "$NAME" "$NAME-deployer-sa"
kubectl label serviceaccount -n "$NAME" "$NAME-deployer-sa" "$labels" \
  app.kubernetes.io/component=deployer.marketplace.cloud.google.com
kubectl create rolebinding -n "$NAME" "$NAME-deployer-rb" --clusterrole=cluster-admin \
  --serviceaccount="$NAME:$NAME-deployer-sa"
kubectl create secret generic -n "$NAME" "$NAME-deployer-config" \
  --from-literal=values.yaml="$(printf 'name: %s\nnamespace: %s\n__image_repo_prefix__: %s\n' "$NAME" "$NAME" "$PREFIX")"
kubectl apply -n "$NAME" -f - <<JOB
apiVersion: batch/v1
kind: Job
metadata: {name: $NAME-deployer, labels: {app.kubernetes.io/name: $NAME}}
spec:
  backoffLimit: 0
  template:
    spec:
      serviceAccountName: $NAME-deployer-sa
      restartPolicy: Never
      containers:
        - name: deployer
          image: $PREFIX/deployer:$TAG
          imagePullPolicy: Always
          command: ["/bin/deploy_with_tests.sh"]
          volumeMounts: [{name: config, mountPath: /data/values.yaml, subPath: values.yaml, readOnly: true}]
      volumes: [{name: config, secret: {secretName: $NAME-deployer-config}}]
JOB
kubectl wait -n "$NAME" --for=condition=complete "job/$NAME-deployer" --timeout=900s &
complete=$!
kubectl wait -n "$NAME" --for=condition=failed "job/$NAME-deployer" --timeout=900s &
failed=$!
wait -n "$complete" "$failed" || true
kubectl logs -n "$NAME" "job/$NAME-deployer" || true
if [[ "$(kubectl get job -n "$NAME" "$NAME-deployer" -o jsonpath='{.status.succeeded}')" == "1" ]]; then
  echo "=== VERIFICATION STATUS === PASSED"
else
  echo "=== VERIFICATION STATUS === FAILED"
  exit 1
fi
