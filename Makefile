# kubeconfig-authority: `make demo` runs the main job end to end, `make test` runs every test.
# The control plane binaries (etcd, kube-apiserver, kube-controller-manager) are built once from
# the upstream Go modules into ~/.cache/kubeconfig-authority (or taken from KUBEBUILDER_ASSETS).

CARGO ?= cargo
KEEP ?= 0

.PHONY: all test lint unit integration controlplane demo bench manifests clean-controlplane

all: test

## test: formatting, lints, unit tests and the integration tests against a real control plane
test: lint unit integration

## unit: every test that needs no control plane (pure code, the generated files), about a
## minute on a warm build
unit:
	$(CARGO) test --workspace --lib --bins
	$(CARGO) test -p kubeconfig-authority-pki --tests --benches
	$(CARGO) test --test crds --example demo

## integration: the tests against a real etcd and kube-apiserver, and the controller benchmark
## at a tiny scale (as a check that it works)
integration: controlplane
	$(CARGO) test --test integration --bench controller

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## controlplane: build (or find) etcd, kube-apiserver and kube-controller-manager
controlplane:
	@tests/controlplane/build.sh >/dev/null

## demo: start a control plane, issue a kubeconfig, prove it with SelfSubjectReview (KEEP=1 leaves it running)
demo: controlplane
	$(CARGO) build --quiet --bin kubeconfig-authority
	KEEP=$(KEEP) $(CARGO) run --quiet --example demo

## bench: the controller against the local control plane (figures in target/bench), then
## issuance micro-benchmarks (criterion; figures in target/criterion)
bench:
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
