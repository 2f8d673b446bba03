//go:build tools

// Package tools keeps crane (go-containerregistry) in this module's build
// list. crane assembles and inspects OCI images offline: hookwarden's image,
// the Redis image and the node's pause and helper images are made with it
// (e2e/images), no Docker and no registry involved.
package tools

import _ "github.com/google/go-containerregistry/cmd/crane"
