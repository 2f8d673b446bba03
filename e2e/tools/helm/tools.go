//go:build tools

// Package tools keeps everything helm's main package (helm.sh/helm/v3/cmd/helm)
// imports in this module's build list, so `go build` of it resolves from
// go.mod and go.sum alone.
package tools

import (
	_ "github.com/Masterminds/semver/v3"
	_ "github.com/gofrs/flock"
	_ "github.com/gosuri/uitable"
	_ "github.com/moby/term"
	_ "github.com/pkg/errors"
	_ "github.com/spf13/cobra"
	_ "github.com/spf13/cobra/doc"
	_ "github.com/spf13/pflag"
	_ "golang.org/x/term"
	_ "golang.org/x/text/cases"
	_ "golang.org/x/text/language"
	_ "helm.sh/helm/v3/pkg/action"
	_ "helm.sh/helm/v3/pkg/chart"
	_ "helm.sh/helm/v3/pkg/chart/loader"
	_ "helm.sh/helm/v3/pkg/chartutil"
	_ "helm.sh/helm/v3/pkg/cli"
	_ "helm.sh/helm/v3/pkg/cli/output"
	_ "helm.sh/helm/v3/pkg/cli/values"
	_ "helm.sh/helm/v3/pkg/downloader"
	_ "helm.sh/helm/v3/pkg/getter"
	_ "helm.sh/helm/v3/pkg/helmpath"
	_ "helm.sh/helm/v3/pkg/kube"
	_ "helm.sh/helm/v3/pkg/lint/support"
	_ "helm.sh/helm/v3/pkg/plugin"
	_ "helm.sh/helm/v3/pkg/plugin/installer"
	_ "helm.sh/helm/v3/pkg/postrender"
	_ "helm.sh/helm/v3/pkg/pusher"
	_ "helm.sh/helm/v3/pkg/registry"
	_ "helm.sh/helm/v3/pkg/release"
	_ "helm.sh/helm/v3/pkg/releaseutil"
	_ "helm.sh/helm/v3/pkg/repo"
	_ "helm.sh/helm/v3/pkg/storage/driver"
)
