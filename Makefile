# podroute build and test entry points.
GO       ?= go
BIN      := bin
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -s -w -X github.com/podroute/podroute/cni.Version=$(VERSION)
# Static binaries: the plugin is exec'd on every pod start and runs on any host.
export CGO_ENABLED := 0

.PHONY: all setup build test fuzz bench lab lab-down lab-cni cluster cluster-down conformance image clean

all: build

# The reference plugins at their pinned versions (hack/install-ref-cni.sh).
REF_CNI := build/ref-cni

# bin/ also holds the reference portmap plugin, beside podroute-agent: the agent installs it
# from there by default (--cni-portmap-plugin) and chains it after podroute for hostPort.
build: $(REF_CNI)/portmap
	@mkdir -p $(BIN)
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/podroute ./cmd/podroute
	ln -sf podroute $(BIN)/podroute-ipam
	$(GO) build -trimpath -ldflags '-s -w -X github.com/podroute/podroute/agent.Version=$(VERSION)' -o $(BIN)/podroute-agent ./cmd/podroute-agent
	$(GO) build -trimpath -ldflags '-s -w -X main.version=$(VERSION)' -o $(BIN)/podroutectl ./cmd/podroutectl
	$(GO) build -trimpath -ldflags '-s -w -X main.version=$(VERSION)' -o $(BIN)/podroute-lbipam ./cmd/podroute-lbipam
	install -m 0755 $(REF_CNI)/portmap $(BIN)/portmap

$(REF_CNI)/portmap:
	hack/install-ref-cni.sh

# Debian packages, reference CNI plugins, the Kubernetes binaries (kube-apiserver, kubelet,
# kube-proxy, e2e.test, agnhost, coredns, ...) and the offline images of the e2e suite and the
# test cluster that the lab and tests use (root; idempotent, cached after the first run).
setup:
	hack/setup.sh
	hack/install-ref-cni.sh
	hack/kube/build.sh
	$(GO) run ./hack/image/e2e

# The container images Kubernetes' e2e suite (e2e.test) and the test cluster run, built
# offline (test/e2eimage): one docker-archive tar per image, for `ctr images import`, under
# /var/cache/podroute/e2e-images. Needs the binaries hack/kube/build.sh builds, and root.
.PHONY: e2e-images
e2e-images:
	hack/kube/build.sh
	$(GO) run ./hack/image/e2e

# The whole suite, as CI runs it (needs root: tests use real network namespaces). One package
# at a time: several packages run whole labs (API server, agents, FRR, kubelets) whose timing
# assertions should not compete for the same two CPUs.
test: setup build
	$(GO) vet ./...
	$(GO) test -p 1 -count=1 -timeout 80m ./...
	$(MAKE) fuzz

# A short fuzzing pass over the config parsers, on top of the seed corpus the tests replay.
FUZZTIME ?= 20s
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzParseConfig$$' -fuzztime $(FUZZTIME) ./cni/

bench: setup build
	$(GO) test -run '^$$' -bench . -benchtime 1x -timeout 30m ./test/cnibench/

# The local lab (root): a real kube-apiserver, three nodes running podroute-agent, an FRR
# top-of-rack router and pods, all in network namespaces. It prints what it built, the BGP
# sessions and cross-node pings, then stays up until Ctrl-C (LAB_HOLD=0: tear down at once).
LAB_HOLD ?= 1
lab: setup build
	$(GO) test -c -o build/lab.test ./test/demo
	cd test/demo && PODROUTE_LAB_HOLD=$(LAB_HOLD) ../../build/lab.test -test.run '^TestLab$$' -test.timeout 0

# Removes what a killed lab left behind (namespaces, processes, FRR state).
lab-down:
	$(GO) test -c -o build/lab.test ./test/demo
	cd test/demo && ../../build/lab.test -test.run '^TestSweep$$'

# A complete cluster on this machine (root), as kubeadm leaves one: a control-plane node and
# two workers (network namespaces with containerd and a kubelet each), kube-proxy
# (CLUSTER_PROXY_MODE: iptables or nftables), CoreDNS, podroute installed with
# `kubectl apply -f deploy/`. It prints its kubeconfig (build/cluster/kubeconfig) and stays
# up until Ctrl-C or `make cluster-down`.
CLUSTER_PROXY_MODE ?= iptables
cluster: setup build
	$(GO) test -c -o build/cluster.test ./test/cluster
	cd test/cluster && PODROUTE_CLUSTER_HOLD=1 PODROUTE_CLUSTER_PROXY_MODE=$(CLUSTER_PROXY_MODE) \
		../../build/cluster.test -test.run '^TestCluster$$' -test.timeout 0 -test.v

# Stops a held cluster (it tears itself down) and removes what a killed one left.
cluster-down:
	@if [ -f build/cluster/pid ]; then \
		pid=$$(cat build/cluster/pid); kill -TERM $$pid 2>/dev/null; \
		while kill -0 $$pid 2>/dev/null; do sleep 1; done; rm -f build/cluster/pid; \
	fi
	$(MAKE) lab-down

# Kubernetes' own e2e suite (e2e.test, v1.32.4) against the cluster `make cluster` builds, once
# with kube-proxy in iptables mode and once in nftables mode: the 41 sig-network conformance
# specs, the network suite, then the NetworkPolicy suite (docs/conformance.md). Reports, with a
# table of every spec, go to build/conformance/<mode>/<suite>/; the run ends with ginkgo's
# summary of each.
CONFORMANCE_MODES ?= iptables,nftables
CONFORMANCE_SUITES ?= conformance,network,netpol
conformance: setup build
	$(GO) test -c -o build/conformance.test ./test/conformance
	@mkdir -p build/conformance
	cd test/conformance && PODROUTE_E2E_MODES=$(CONFORMANCE_MODES) PODROUTE_E2E_SUITES=$(CONFORMANCE_SUITES) PODROUTE_E2E_REPORT=$(CURDIR)/build/conformance \
		../../build/conformance.test -test.run '^TestConformance$$' -test.timeout 0 -test.v; \
	status=$$?; cd $(CURDIR); for m in $$(echo $(CONFORMANCE_MODES) | tr , ' '); do \
		for s in $$(echo $(CONFORMANCE_SUITES) | tr , ' '); do echo "kube-proxy $$m, $$s:"; \
		grep -h -e '^Ran [0-9]* of' -e '[0-9]* Passed |' build/conformance/$$m/$$s/e2e.log; done; done; exit $$status

# The smaller CNI-only lab: one node, three pods, no control plane.
lab-cni: setup build
	hack/lab.sh up

# The image of the agent and the allocator (podroute-lbipam), built offline from bin/ and the
# reference portmap (docker-archive tar for ctr/docker load).
image: build
	$(GO) run ./hack/image -bin $(BIN) -lbipam $(BIN)/podroute-lbipam -portmap $(REF_CNI)/portmap -version $(VERSION) -o build/podroute-$(VERSION).tar

clean:
	rm -rf $(BIN) build
