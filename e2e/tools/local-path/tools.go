//go:build tools

// Package tools keeps Rancher's local-path-provisioner (a main package) in
// this module's build list, so `go build github.com/rancher/local-path-provisioner`
// resolves from go.mod and go.sum alone. It gives the local node's PVCs (the
// chart's Redis) real volumes: host directories it creates through a helper pod.
package tools

import _ "github.com/rancher/local-path-provisioner"
