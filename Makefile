# kubeconfig-authority: `make demo` runs the main job end to end, `make test` runs every test.
# The control plane binaries (etcd, kube-apiserver, kube-controller-manager) are built once from
# the upstream Go modules into ~/.cache/kubeconfig-authority (or taken from KUBEBUILDER_ASSETS).

CARGO ?= cargo
KEEP ?= 0

.PHONY: all test lint unit integration node-test controlplane tools image cluster demo bench manifests clean-controlplane

all: test

## test: formatting, lints, unit tests, the integration tests against a real control plane, and
## the image installed on a real node
test: lint unit integration node-test

## unit: every test that needs no control plane (pure code, the generated files), about a
## minute on a warm build
unit:
	$(CARGO) test --workspace --lib --bins
	$(CARGO) test -p kubeconfig-authority-pki --tests --benches
	$(CARGO) test --test crds --example demo

## integration: the tests against a real etcd and kube-apiserver (with real Flux and Argo CD
## code), and the controller benchmark, cert-manager beside it, at a tiny scale (as a check
## that it works)
integration: controlplane tools
	$(CARGO) test --test integration --bench controller

## node-test: `make image`, a real node (containerd, kubelet, kube-proxy, kube-scheduler) beside
## a control plane, the controller installed with helm and with kubectl apply -k (needs root)
node-test: controlplane
	$(CARGO) test --test node

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## controlplane: build (or find) etcd, kube-apiserver and kube-controller-manager
controlplane:
	@tests/controlplane/build.sh >/dev/null

## tools: build (or find) the Go tools the tests use: helm and promtool, Flux's
## source-controller and kustomize-controller, the Argo CD check, and cert-manager's controller
## for the side-by-side bench (tests/tools/)
tools:
	@tests/tools/build.sh >/dev/null
	@tests/tools/build.sh flux >/dev/null
	@tests/tools/build.sh argocd >/dev/null
	@tests/tools/build.sh certmanager >/dev/null

## image: the controller's OCI image (a static binary, from scratch), reproducibly, as the OCI
## archive target/image/kubeconfig-authority.oci.tar; prints its reference and digest
image:
	@config/image/controller.sh

## cluster: a control plane and a real node with the image imported, left running (an admin
## kubeconfig and a stop script); install the controller on it as the README says (needs root)
cluster: controlplane image
	@tests/controlplane/build.sh node >/dev/null
	CLUSTER_IMAGES=target/image/kubeconfig-authority.oci.tar $(CARGO) run --quiet --example cluster

## demo: start a control plane, issue a kubeconfig, prove it with SelfSubjectReview (KEEP=1 leaves it running)
demo: controlplane
	$(CARGO) build --quiet --bin kubeconfig-authority
	KEEP=$(KEEP) $(CARGO) run --quiet --example demo

## bench: the controller against the local control plane and beside cert-manager (figures in
## target/bench; BENCH_SCALE=100000 for this controller alone at that scale, BENCH_RSA=100 for
## RSA-4096 credentials alone beside cert-manager and openssl), then issuance
## micro-benchmarks (criterion; figures in target/criterion)
bench: controlplane tools
	$(CARGO) bench --bench controller
	$(CARGO) bench -p kubeconfig-authority-pki --bench issue

## manifests: regenerate crds/ and config/admission/, and the Helm chart's copies
manifests:
	$(CARGO) run -q -- crd > crds/kubeconfig-authority.yaml
	$(CARGO) run -q -- admission > config/admission/policies.yaml
	cp crds/kubeconfig-authority.yaml config/helm/kubeconfig-authority/crds/
	cp config/rbac/cluster_role.yaml config/rbac/team_roles.yaml config/admission/policies.yaml config/helm/kubeconfig-authority/files/

clean-controlplane:
	rm -rf "$${KUBECONFIG_AUTHORITY_CACHE:-$${XDG_CACHE_HOME:-$$HOME/.cache}/kubeconfig-authority}/controlplane"
