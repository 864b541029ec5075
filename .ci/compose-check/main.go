// compose-check loads Docker Compose files with compose-go, the loader `docker compose config`
// uses (interpolation, the compose-spec JSON schema, normalisation, validation), and fails on the
// first error. There is no Docker in CI; this is what `docker compose config` would refuse.
//
// Usage: go run . FILE [FILE...]   (from .ci/compose-check; the files are one project, like -f)
package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"

	"github.com/compose-spec/compose-go/v2/cli"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: compose-check FILE [FILE...]")
		os.Exit(2)
	}
	files := os.Args[1:]
	for i, f := range files {
		abs, err := filepath.Abs(f)
		if err != nil {
			fail(err)
		}
		files[i] = abs
	}
	opts, err := cli.NewProjectOptions(files,
		cli.WithWorkingDirectory(filepath.Dir(files[0])),
		cli.WithDotEnv,
		cli.WithOsEnv,
		cli.WithName("openim-callback-gateway"),
		// Every optional service too, so that none escapes the checks.
		cli.WithProfiles([]string{"example", "redis"}),
	)
	if err != nil {
		fail(err)
	}
	project, err := opts.LoadProject(context.Background())
	if err != nil {
		fail(err)
	}
	// The gateway must join OpenIM's network, which openim-docker creates: an external network.
	external := 0
	for _, n := range project.Networks {
		if bool(n.External) {
			external++
		}
	}
	if external == 0 {
		fail(fmt.Errorf("no external network: the gateway must join openim-docker's network"))
	}
	names := project.ServiceNames()
	sort.Strings(names)
	fmt.Printf("ok: %v: services %v, %d external network(s)\n", os.Args[1:], names, external)
}

func fail(err error) {
	fmt.Fprintf(os.Stderr, "compose-check: %v\n", err)
	os.Exit(1)
}
