// compose-check loads Docker Compose files with compose-go, the loader `docker compose config`
// uses (interpolation, the compose-spec JSON schema, normalisation, validation), and fails on the
// first error. There is no Docker in CI; this is what `docker compose config` would refuse.
//
// Usage: compose-check [-external] [-env SERVICE=VAR] FILE [FILE...]
// The files are one project, merged in order like `docker compose -f A -f B`. -external requires
// an external network (the gateway must join openim-docker's); -env requires the merged service
// to set the variable (the override must reach openim-server).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/compose-spec/compose-go/v2/cli"
)

func main() {
	wantExternal := flag.Bool("external", false, "require an external network")
	wantEnv := flag.String("env", "", "SERVICE=VAR: require the service to set VAR")
	flag.Parse()
	if flag.NArg() < 1 {
		fmt.Fprintln(os.Stderr, "usage: compose-check [-external] [-env SERVICE=VAR] FILE [FILE...]")
		os.Exit(2)
	}
	files := flag.Args()
	shown := strings.Join(files, " + ")
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
	if *wantExternal && external == 0 {
		fail(fmt.Errorf("no external network: the gateway must join openim-docker's network"))
	}
	if *wantEnv != "" {
		service, variable, _ := strings.Cut(*wantEnv, "=")
		svc, err := project.GetService(service)
		if err != nil {
			fail(err)
		}
		if value, ok := svc.Environment[variable]; !ok || value == nil || *value == "" {
			fail(fmt.Errorf("service %s does not set %s", service, variable))
		}
	}
	names := project.ServiceNames()
	sort.Strings(names)
	fmt.Printf("ok: %s: services %v, %d external network(s)\n", shown, names, external)
}

func fail(err error) {
	fmt.Fprintf(os.Stderr, "compose-check: %v\n", err)
	os.Exit(1)
}
